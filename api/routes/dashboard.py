"""The web dashboard: `/` and its static files (api/static/).

The page is plain HTML, CSS and JavaScript modules with one vendored chart library
(api/static/vendor/), served as they are: no build step. It reads the same API as any
client (/runs..., the WebSocket, /config), so `/` and the static files need no API key:
only the data does, and the page asks for a key when the API answers 401.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PATH = "/static"

router = APIRouter()


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    """The dashboard: one page; the views are in the URL's fragment (#/runs/<id>...)."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def static_files() -> StaticFiles:
    """api/static/ at STATIC_PATH (mounts are never in the OpenAPI schema)."""
    return StaticFiles(directory=STATIC_DIR)
