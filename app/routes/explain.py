"""POST /explain: every layer's output for one image, and which pixels pushed the answer.

Read-only: no token, and nothing changes (weights, gradients, optimizer state, version, step).
"""

from fastapi import APIRouter, Request

from app.http import EngineDep, FastJSONResponse, LimitsDep, json_body_doc, read_json_body
from app.routes.predict import requested_versions
from app.schemas import ExplainRequest, ExplainResponse
from app.tensors import images_from_body, optional_class, reject_unknown_fields, single_image

router = APIRouter(tags=["predict"])

EXPLAIN_FIELDS = frozenset(ExplainRequest.model_fields)


@router.post(
    "/explain",
    response_class=FastJSONResponse,
    responses={200: {"model": ExplainResponse}},
    openapi_extra=json_body_doc(ExplainRequest),
)
async def explain(request: Request, engine: EngineDep, limits: LimitsDep) -> FastJSONResponse:
    """Activations of every layer and the saliency `d fc3[target] / d x` for one image."""
    body = await read_json_body(request)
    reject_unknown_fields(body, EXPLAIN_FIELDS, "the body")
    image = single_image(images_from_body(body, limits), "the image")
    target = optional_class(body.get("target"), "target")
    version, min_version = requested_versions(body)
    result = await engine.explain(image, target, version, min_version)
    return FastJSONResponse(result.model_dump())
