"""API keys (admin): create a key (shown once, stored hashed), list and revoke keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.concurrency import run_in_threadpool

from service.api.deps import AdminKey, State
from service.api.schemas import KeyCreate, KeyCreated, KeyInfo, KeyList
from service.core.keys import create_key

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated, summary="Create an API key")
async def create_api_key(body: KeyCreate, state: State, _: AdminKey) -> KeyCreated:
    key, record = await run_in_threadpool(create_key, state.store, body.scope, body.name)
    return KeyCreated(key=key, key_id=record.key_id, scope=record.scope, name=record.name)


@router.get("", response_model=KeyList, summary="List API keys (never the keys themselves)")
async def list_api_keys(state: State, _: AdminKey) -> KeyList:
    records = await run_in_threadpool(state.store.list_api_keys)
    return KeyList(
        keys=[
            KeyInfo(
                key_id=r.key_id,
                scope=r.scope,
                name=r.name,
                created=r.created,
                last_used=r.last_used,
            )
            for r in records
        ]
    )


@router.delete(
    "/{key_id}",
    status_code=204,
    response_class=Response,
    summary="Revoke an API key (at once; the last admin key cannot be revoked: 409)",
)
async def revoke_api_key(
    key_id: Annotated[int, Path(ge=1, le=2**63 - 1)], state: State, _: AdminKey
) -> Response:
    await run_in_threadpool(state.keys.revoke, key_id)
    return Response(status_code=204)
