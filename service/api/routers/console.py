"""The operator console: static files shipped in the package (service/api/console), no build
step and no outside host.

Every file is served with `Content-Security-Policy: default-src 'self'` (and no inline script
or style is used), so a page of the console can load nothing but the console's own files and
talk to nothing but this service.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from service.core.errors import not_found

router = APIRouter(include_in_schema=False)

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
CONTENT_SECURITY_POLICY = "default-src 'self'; base-uri 'none'; frame-ancestors 'none'"
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def console_file(relative: str) -> Path:
    """A file of the console by its path under /console/; not_found for anything else (no
    path outside the directory, no file type the console does not ship)."""
    path = (CONSOLE_DIR / relative).resolve()
    if (
        not path.is_relative_to(CONSOLE_DIR)
        or path.suffix not in _MEDIA_TYPES
        or not path.is_file()
    ):
        raise not_found("console file", relative)
    return path


@router.get("/console")
async def console_root() -> RedirectResponse:
    # Relative URLs in the page (js/app.js) resolve against /console/, not /.
    return RedirectResponse("/console/", status_code=308)


@router.get("/console/{relative:path}")
async def console_asset(relative: str) -> Response:
    path = console_file(relative or "index.html")
    return Response(
        path.read_bytes(), media_type=_MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS
    )
