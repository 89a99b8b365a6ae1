"""FastAPI dependencies: the service state, its domain services, and API-key authentication."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from starlette.requests import HTTPConnection

from service.api.middleware import AUTHENTICATED_KEY
from service.core.calibration_sets import CalibrationSets
from service.core.galleries import Galleries
from service.core.recognition import Recognition
from service.core.state import ServiceState
from service.storage import ApiKeyRecord


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


class ScopedApiKey(APIKeyHeader):
    """The `X-API-Key` header as the OpenAPI security scheme, resolved to the key's record when
    the key may act in `scope` (admin keys may do everything).

    The scheme and the check are one dependency, not a check depending on the header's scheme:
    each level of dependencies costs FastAPI more per request than the check itself.
    """

    def __init__(self, scope: str) -> None:
        super().__init__(
            name="X-API-Key",
            scheme_name="APIKeyHeader",
            description="an API key (scope admin or client)",
            auto_error=False,
        )
        self.scope = scope

    async def __call__(self, request: HTTPConnection) -> ApiKeyRecord:  # type: ignore[override]
        key = request.headers.get("x-api-key")
        keys = request.app.state.opengallery.keys
        # The middleware's gate authenticated the key of every /v1/ request before its body.
        gated = request.scope.get("state", {}).get(AUTHENTICATED_KEY)
        if gated is not None and gated[0] == key:
            record = keys.authorize(gated[1], self.scope)
        else:
            record = keys.authenticate(key, self.scope)
        request.state.api_key_id = record.key_id
        return record


AdminKey = Annotated[ApiKeyRecord, Security(ScopedApiKey("admin"))]
ClientKey = Annotated[ApiKeyRecord, Security(ScopedApiKey("client"))]
GalleriesDep = Annotated[Galleries, Depends(get_galleries)]
RecognitionDep = Annotated[Recognition, Depends(get_recognition)]
CalibrationSetsDep = Annotated[CalibrationSets, Depends(get_calibration_sets)]
State = Annotated[ServiceState, Depends(get_state)]
