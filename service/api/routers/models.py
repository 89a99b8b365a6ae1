"""Models: list the bundles the service holds; register another one (admin)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from service.api.deps import AdminKey, ClientKey, State
from service.api.schemas import ModelList, ModelOut, ModelRegister, ModelRegistered
from service.core.bundles import register_bundle

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList, summary="List models and the galleries using each")
async def list_models(state: State, _: ClientKey) -> ModelList:
    galleries = await run_in_threadpool(state.store.list_galleries)
    return ModelList(
        models=[
            ModelOut(
                model=model.model_id,
                name=model.bundle.manifest.name,
                version=model.bundle.manifest.version,
                embedding_dim=model.dim,
                calibration_size=len(model.calibration),
                default=model.model_id == state.models.default_model_id,
                galleries=[g.name for g in galleries if g.model_id == model.model_id],
                metrics=model.bundle.manifest.metrics,
            )
            for model in state.models.all()
        ]
    )


@router.post(
    "",
    status_code=201,
    response_model=ModelRegistered,
    summary="Register a bundle from the server's disk (verified: checksum and schema)",
    description="`path` is an absolute bundle directory on the server's disk. The bundle is "
    "verified, copied into the service's data directory (it survives a restart and the "
    "removal of the source) and loaded; an invalid bundle is a 422 and changes nothing, an "
    "already registered name@version a 409.",
)
async def register_model(body: ModelRegister, state: State, _: AdminKey) -> ModelRegistered:
    def register() -> str:
        model = register_bundle(state.models, state.bundles, state.store, body.path)
        return model.model_id

    return ModelRegistered(model=await run_in_threadpool(register))
