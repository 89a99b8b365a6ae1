"""API keys (admin): create a key; it is shown once and stored hashed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from service.api.deps import AdminKey, State
from service.api.schemas import KeyCreate, KeyCreated
from service.core.keys import create_key

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated, summary="Create an API key")
async def create_api_key(body: KeyCreate, state: State, _: AdminKey) -> KeyCreated:
    key, record = await run_in_threadpool(create_key, state.store, body.scope, body.name)
    return KeyCreated(key=key, key_id=record.key_id, scope=record.scope, name=record.name)
