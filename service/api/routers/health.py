"""Liveness, readiness and metrics: no key needed."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.api.deps import State
from service.api.schemas import Health, Readiness
from service.core.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Model loaded, indexes built, database and index server answering (503 otherwise)",
    responses={503: {"model": Readiness}},
)
async def readyz(state: State) -> Response:
    storage_full = await run_in_threadpool(state.store.space_exhausted)
    unavailable = await run_in_threadpool(state.unavailable)
    readiness = Readiness(
        ready=state.ready and not storage_full and not unavailable,
        model_loaded=state.models.default_model_id is not None,
        indexes_built=state.indexes_built,
        models=[model.model_id for model in state.models.all()],
        storage_full=storage_full,
        unavailable=unavailable,  # type: ignore[arg-type]
    )
    return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
