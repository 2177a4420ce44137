"""The tutorial's loop one cell at a time: POST /zero-grad, POST /backward, POST /step.

`POST /train-step` runs the whole loop; these split it so a learner can look in between (GET
/params shows the gradients). Each needs the token when one is set, like every route that
changes the training state.
"""

from typing import Any

from fastapi import APIRouter, Request

from app.http import AuthDep, EngineDep, FastJSONResponse, LimitsDep, json_body_doc, read_json_body
from app.schemas import (
    BackwardRequest,
    BackwardResponse,
    StepRequest,
    StepResponse,
    VersionResponse,
)
from app.tensors import (
    images_from_body,
    optional_flag,
    optional_lr,
    reject_unknown_fields,
    vectors_from_json,
)

router = APIRouter(tags=["tutorial"], dependencies=[AuthDep])

BACKWARD_FIELDS = frozenset(BackwardRequest.model_fields)
STEP_FIELDS = frozenset(StepRequest.model_fields)


@router.post("/zero-grad", response_model=VersionResponse)
async def zero_grad(engine: EngineDep) -> dict[str, int]:
    """`net.zero_grad()`: every gradient becomes null (set_to_none, torch's default)."""
    return await engine.zero_grad()


@router.post(
    "/backward",
    response_class=FastJSONResponse,
    responses={200: {"model": BackwardResponse}},
    openapi_extra=json_body_doc(BackwardRequest),
)
async def backward(request: Request, engine: EngineDep, limits: LimitsDep) -> FastJSONResponse:
    """`out = net(x); out.backward(grad_outputs)`; gradients add up with `zero_grad` false."""
    body = await read_json_body(request)
    reject_unknown_fields(body, BACKWARD_FIELDS, "the body")
    images = images_from_body(body, limits)
    grad_outputs = vectors_from_json(body.get("grad_outputs"), images.shape[0], "grad_outputs")
    zero_grad = optional_flag(body, "zero_grad", default=True)
    result = await engine.backward(images, grad_outputs, zero_grad)
    return FastJSONResponse(result.model_dump())


@router.post(
    "/step",
    response_class=FastJSONResponse,
    responses={200: {"model": StepResponse}},
    # The body is optional: an empty one steps with the optimizer's own lr.
    openapi_extra={"requestBody": {**json_body_doc(StepRequest)["requestBody"], "required": False}},
)
async def step(request: Request, engine: EngineDep) -> FastJSONResponse:
    """`optimizer.step()` with the gradients already there; they stay afterwards."""
    body: dict[str, Any] = await read_json_body(request) if await request.body() else {}
    reject_unknown_fields(body, STEP_FIELDS, "the body")
    result = await engine.step_with_gradients(optional_lr(body.get("lr")))
    return FastJSONResponse(result.model_dump())
