"""The weights: GET /params, GET /model, GET /params/export, PUT /params/import."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.http import AuthDep, EngineDep, FastJSONResponse
from app.schemas import ModelResponse, ParamsResponse, VersionResponse

router = APIRouter(tags=["parameters"])

SAFETENSORS_MEDIA_TYPE = "application/octet-stream"


@router.get("/params", response_class=FastJSONResponse, responses={200: {"model": ParamsResponse}})
async def get_params(
    engine: EngineDep,
    name: Annotated[list[str] | None, Query(description="parameter name; repeatable")] = None,
    values: Annotated[bool, Query(description="include the values")] = False,
    grads: Annotated[bool, Query(description="include the latest gradients")] = False,
) -> FastJSONResponse:
    """Statistics of each parameter and of its latest gradient; values on request."""
    return FastJSONResponse(await engine.parameters(name, values, grads))


@router.get("/model", response_model=ModelResponse)
async def get_model(engine: EngineDep) -> dict[str, Any]:
    """The network: `print(net)`, layers with output shapes, parameter count, device."""
    return engine.model_info()


@router.get(
    "/params/export",
    response_class=Response,
    responses={200: {"content": {SAFETENSORS_MEDIA_TYPE: {}}, "description": "safetensors"}},
)
async def export_params(engine: EngineDep) -> Response:
    """The weights as a safetensors file."""
    return Response(
        await engine.export_weights(),
        media_type=SAFETENSORS_MEDIA_TYPE,
        headers={"Content-Disposition": 'attachment; filename="lenet.safetensors"'},
    )


@router.put(
    "/params/import",
    response_model=VersionResponse,
    dependencies=[AuthDep],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {SAFETENSORS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def import_params(request: Request, engine: EngineDep) -> dict[str, int]:
    """Replace the weights by a safetensors file (the raw body); step 0, fresh optimizer."""
    return await engine.import_weights(await request.body())
