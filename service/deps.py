"""FastAPI dependencies: the service state, and API-key authentication with scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.auth import hash_key
from service.engine import GalleryEngine
from service.errors import ApiError
from service.state import AppState
from service.storage import ApiKeyRecord

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="an API key (scope admin or client)"
)


# Dependencies are `async def` although they do not await: FastAPI would otherwise run each in
# a worker thread, and those hops cost more than the work (measured in bench/service.py).
async def get_state(request: Request) -> AppState:
    return request.app.state.opengallery


async def get_engine(request: Request) -> GalleryEngine:
    return request.app.state.opengallery.engine


def _authenticate(state: AppState, key: str | None) -> ApiKeyRecord:
    if not key:
        raise ApiError(401, "unauthorized", "missing API key: send it in the X-API-Key header")
    digest = hash_key(key)
    with state.key_cache_lock:
        record = state.key_cache.get(digest)
    if record is None:
        record = state.store.find_api_key(digest)
        if record is None:
            raise ApiError(401, "unauthorized", "invalid API key")
        with state.key_cache_lock:
            state.key_cache[digest] = record
    return record


def require(scope: str) -> Callable[..., ApiKeyRecord]:
    """A dependency that admits keys of `scope`; admin keys may do everything."""

    async def dependency(
        request: Request, key: Annotated[str | None, Security(api_key_header)] = None
    ) -> ApiKeyRecord:
        # A cache hit is a dict lookup; a miss is one indexed SQLite read, once per key.
        record = _authenticate(request.app.state.opengallery, key)
        if scope == "admin" and record.scope != "admin":
            raise ApiError(403, "forbidden", "this operation needs an admin key")
        request.state.api_key_id = record.key_id
        return record

    return dependency


AdminKey = Annotated[ApiKeyRecord, Depends(require("admin"))]
ClientKey = Annotated[ApiKeyRecord, Depends(require("client"))]
Engine = Annotated[GalleryEngine, Depends(get_engine)]
State = Annotated[AppState, Depends(get_state)]
