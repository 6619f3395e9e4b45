"""The ops dashboard's page: one HTML file, one script, one stylesheet (and an icon), all served from the
package (nothing from the internet), under a Content-Security-Policy of this origin only.

The page itself needs no token: it holds no data. The ops person pastes an API token into it,
and the script sends that with every call to the ``/ops`` JSON routes (ops role required)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

router = APIRouter(prefix="/ops", include_in_schema=False)

STATIC = Path(__file__).resolve().parents[1] / "static" / "ops"
ASSETS = {
    "": ("index.html", "text/html; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),  # else browsers ask for /favicon.ico: a 404
}
# Scripts, styles, images and calls from this origin only: no inline script or style, no
# framing, no form posting elsewhere. Data reaches the DOM as text, never as markup.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated, so a new release's script is picked up
}


@cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _asset(path: str) -> Response:
    name, media_type = ASSETS[path]
    return Response(_read(name), media_type=media_type, headers=HEADERS)


@router.get("")
def to_page() -> RedirectResponse:
    return RedirectResponse("ops/", status_code=308)  # relative: works behind a path prefix


@router.get("/")
def page() -> Response:
    return _asset("")


@router.get("/dashboard.js")
def script() -> Response:
    return _asset("dashboard.js")


@router.get("/dashboard.css")
def stylesheet() -> Response:
    return _asset("dashboard.css")


@router.get("/favicon.svg")
def icon() -> Response:
    return _asset("favicon.svg")
