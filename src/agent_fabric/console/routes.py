"""The operators' console: one static page and its script and style, served from package data.

Deliberately small and boring: no build step, no framework, nothing fetched from the internet.
The page holds no data of its own and no server-side session: it signs in by exchanging an API
key for a JWT at /api/v1/auth/token (or takes a JWT as is), keeps the token in the tab's
sessionStorage, and every view calls the JSON API with it. So roles and tenant scoping are the
API's own (a pod_admin sees its POD only), with nothing to keep in step here.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse, Response

from agent_fabric.errors import NotFound

# Script and style only from this origin; the API is the only thing the page talks to.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}

router = APIRouter(prefix="/console", include_in_schema=False)


def _read(name: str) -> bytes:
    return resources.files("agent_fabric.console").joinpath("static", name).read_bytes()


@router.get("")
async def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=307)


@router.get("/")
async def console_page() -> Response:
    return Response(
        _read("index.html"),
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CONSOLE_CSP, "Cache-Control": "no-store"},
    )


@router.get("/static/{name}")
async def console_asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no console asset {name!r}")
    return Response(_read(name), media_type=media_type, headers={"Cache-Control": "no-cache"})


def install_console(app: FastAPI, enabled: bool) -> None:
    """Mount the console unless AGENT_FABRIC_CONSOLE_ENABLED is false."""
    if enabled:
        app.include_router(router)
