"""Every route of the service, in the order the router tries them: the map of the API.

`POST /predict` comes first, as a plain Starlette route (see `app.routes.predict`); every other
route belongs to one APIRouter per area. The page (`/` and `/static`) is last.
"""

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from app.routes import (
    cells,
    checkpoints,
    docs,
    explain,
    health,
    images,
    metrics,
    page,
    params,
    predict,
    training,
    triton,
    v2,
    versions,
)

ROUTERS = (
    training.router,  # /train-step, /loss, /optimizer(s), /reset
    cells.router,  # /zero-grad, /backward, /step: the tutorial's loop cell by cell
    explain.router,  # /explain
    params.router,  # /params, /model, /params/export, /params/import
    checkpoints.router,  # /checkpoints
    images.router,  # /predict/image
    versions.router,  # /versions: the resident versions requests can name
    health.router,  # /healthz, /readyz
    metrics.router,  # /metrics
    triton.router,  # /v2/.../config, stats, repository: Triton's extensions; before v2's
    v2.router,  # /v2/... (KServe v2 / Open Inference Protocol)
    docs.router,  # /docs (Swagger UI), /redoc: offline, from the package's assets
    page.router,  # / (the web page)
)

# Routes that FastAPI cannot document by itself, described by an APIRoute for the schema.
DOCUMENTED_ONLY: tuple[APIRoute, ...] = (predict.openapi_route,)


def include_routes(app: FastAPI) -> None:
    """Give `app` every route, in order."""
    app.router.routes.append(predict.route)
    for router in ROUTERS:
        app.include_router(router)
    page.mount_static(app)


def documented_routes(app: FastAPI) -> list[BaseRoute]:
    """The routes the OpenAPI schema describes, in the order of the API's map."""
    return [*DOCUMENTED_ONLY, *app.routes]
