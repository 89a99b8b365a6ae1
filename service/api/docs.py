"""The API's documentation pages, served from the package: `/docs` works without a network.

FastAPI's default `/docs` and `/redoc` pages load their scripts from a CDN; offline they are
blank. Swagger UI's files live in `service/api/static/swagger-ui/` (see its README) and `/`
leads to `/docs`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).resolve().parent / "static" / "swagger-ui"
ASSETS_URL = "/docs/assets"


def install_docs(app: FastAPI) -> None:
    """Add `/docs` (Swagger UI from local files) and `GET /` (a redirect to it).

    The app must be made with `docs_url=None, redoc_url=None`.
    """
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="swagger-ui-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
        )

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/docs")
