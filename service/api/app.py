"""The FastAPI application factory: `create_app(settings)`.

The lifespan opens the store, loads the model bundle, makes sure an admin key exists (printing
a generated one once), and builds every gallery's index from the database before the first
request is served.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from service.api.docs import install_docs
from service.api.errors import install_error_handlers
from service.api.middleware import RequestContextMiddleware
from service.api.routers import (
    calibration,
    console,
    galleries,
    health,
    jobs,
    keys,
    migrations,
    models,
    recognition,
    samples,
    subjects,
    transfer,
)
from service.api.schemas import ErrorResponse
from service.core.memory import freeze_start_up_objects
from service.core.metrics import Metrics
from service.core.ratelimit import FailureLimiter
from service.core.state import ServiceState, open_state
from service.settings import Settings

logger = logging.getLogger("opengallery.service")

API_DESCRIPTION = """\
Open-set recognition over galleries: enrol subjects, then identify probes as "subject X" or
"unknown" at a chosen false positive identification rate (FPIR), or verify a probe against
one subject. Send an API key in the `X-API-Key` header. Every error is
`{"error": {"code", "message"}}`.
"""

_ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "malformed request (e.g. an invalid Content-Length header or malformed HTTP)"),
        (401, "missing or invalid API key"),
        (403, "the key's scope does not allow this"),
        (404, "not found"),
        (405, "method not allowed (the Allow header lists the allowed ones)"),
        (408, "the request's headers or body did not arrive in time"),
        (409, "conflict"),
        (413, "too large"),
        (415, "unsupported media type"),
        (422, "invalid input"),
        (429, "too many failed authentications from this address (see Retry-After)"),
        (431, "request headers too large"),
        (
            503,
            "busy (server_busy) or a dependency down (database_unavailable, "
            "index_unavailable): retry later",
        ),
        (507, "the server's storage is full: nothing was written"),
    ]
}


def announce_admin_key(key: str) -> None:
    banner = (
        "\n"
        "  opengallery: generated the first admin API key (shown once; it is stored hashed):\n"
        f"    {key}\n"
        "  Send it as the X-API-Key header. Set OPENGALLERY_ADMIN_KEY to choose your own.\n"
    )
    print(banner, file=sys.stderr, flush=True)


def create_app(
    settings: Settings | None = None,
    state: ServiceState | None = None,
    *,
    index_dir: Path | None = None,
    freeze_after_start: bool = False,
) -> FastAPI:
    """The app; it opens its state at start-up (its index kept on disk in `index_dir`, see
    `open_state`), or serves `state` opened beforehand (by `opengallery serve`, which reports a
    failed start in one line). `freeze_after_start` (a server process's one app): what start-up
    built is left out of later garbage collections (`freeze_start_up_objects`)."""
    settings = state.settings if state is not None else settings or Settings()
    metrics = (
        state.metrics
        if state is not None
        else Metrics(gallery_labels=settings.metrics_gallery_labels)
    )
    opened = state

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = opened or await run_in_threadpool(
            open_state, settings, metrics, index_dir=index_dir
        )
        app.state.opengallery = state
        if state.generated_admin_key:
            announce_admin_key(state.generated_admin_key)
        if freeze_after_start:
            freeze_start_up_objects()
        logger.info(
            "ready: model %s, %d galleries, docs at /docs",
            state.models.default_model_id,
            len(state.live.sizes()),
        )
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="opengallery",
        version="1",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        responses=_ERRORS,  # type: ignore[arg-type]
        docs_url=None,  # served from the package by install_docs: no CDN
        redoc_url=None,
    )
    install_error_handlers(app)
    install_docs(app)
    # Routes are matched in this order: identify and verify, the hot paths, come first (their
    # paths match no other route's, so the order changes no answer, only the matching work).
    for router in (
        recognition.router,
        transfer.router,
        galleries.router,
        subjects.router,
        samples.router,
        samples.gallery_router,
        models.router,
        migrations.router,
        jobs.router,
        keys.router,
        calibration.router,
    ):
        app.include_router(router)
    app.include_router(health.router)
    app.include_router(console.router)
    app.add_middleware(
        RequestContextMiddleware,  # type: ignore[arg-type]
        max_body_bytes=settings.max_request_bytes,
        metrics=metrics,
        body_timeout=settings.body_timeout,
        auth_failures=FailureLimiter(
            settings.auth_failure_burst, settings.auth_failures_per_second
        ),
    )
    return app
