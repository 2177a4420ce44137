"""The web page: GET / (app/static/index.html) and the files under /static."""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> Response:
    """The page."""
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return Response(status_code=404)
    return FileResponse(page)


def mount_static(app: FastAPI) -> None:
    """Serve the page's scripts, styles and data under /static."""
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
