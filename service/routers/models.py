"""Models: list the bundles the service holds; register another one (admin)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from models.bundle import BundleError
from service.deps import AdminKey, ClientKey, State
from service.errors import ApiError
from service.registry import DuplicateModel
from service.schemas import ModelList, ModelOut, ModelRegister, ModelRegistered

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
            )
            for model in state.models.all()
        ]
    )


@router.post(
    "",
    status_code=201,
    response_model=ModelRegistered,
    summary="Register a bundle from the server's disk (verified: checksum and schema)",
)
async def register_model(body: ModelRegister, state: State, _: AdminKey) -> ModelRegistered:
    def load() -> str:
        try:
            model = state.models.load(body.path)
        except BundleError as error:
            raise ApiError(422, "invalid_bundle", str(error)) from None
        except DuplicateModel as error:
            raise ApiError(409, "already_exists", str(error)) from None
        except (OSError, ValueError, RuntimeError) as error:  # onnxruntime refuses the graph
            raise ApiError(422, "invalid_bundle", f"{body.path}: {error}") from None
        state.store.register_model(model.model_id, str(model.bundle.path))
        return model.model_id

    return ModelRegistered(model=await run_in_threadpool(load))
