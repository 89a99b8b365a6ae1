"""FastAPI dependencies: the service state, its domain services, and API-key authentication."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.core.calibration_sets import CalibrationSets
from service.core.galleries import Galleries
from service.core.recognition import Recognition
from service.core.state import ServiceState
from service.storage import ApiKeyRecord

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="an API key (scope admin or client)"
)


# Dependencies are `async def` although they do not await: FastAPI would otherwise run each in
# a worker thread, and those hops cost more than the work (measured in bench/service.py).
async def get_state(request: Request) -> ServiceState:
    return request.app.state.opengallery


async def get_galleries(request: Request) -> Galleries:
    return request.app.state.opengallery.galleries


async def get_recognition(request: Request) -> Recognition:
    return request.app.state.opengallery.recognition


async def get_calibration_sets(request: Request) -> CalibrationSets:
    return request.app.state.opengallery.calibration_sets


def require(scope: str) -> Callable[..., ApiKeyRecord]:
    """A dependency that admits keys of `scope`; admin keys may do everything."""

    async def dependency(
        request: Request, key: Annotated[str | None, Security(api_key_header)] = None
    ) -> ApiKeyRecord:
        record = request.app.state.opengallery.keys.authenticate(key, scope)
        request.state.api_key_id = record.key_id
        return record

    return dependency


AdminKey = Annotated[ApiKeyRecord, Depends(require("admin"))]
ClientKey = Annotated[ApiKeyRecord, Depends(require("client"))]
GalleriesDep = Annotated[Galleries, Depends(get_galleries)]
RecognitionDep = Annotated[Recognition, Depends(get_recognition)]
CalibrationSetsDep = Annotated[CalibrationSets, Depends(get_calibration_sets)]
State = Annotated[ServiceState, Depends(get_state)]
