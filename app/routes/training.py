"""Training: POST /train-step, POST /loss, GET/PUT /optimizer, POST /reset."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.errors import BadRequest
from app.http import (
    AuthDep,
    EngineDep,
    FastJSONResponse,
    LimitsDep,
    json_body_doc,
    read_json_body,
)
from app.optimizers import OptimizerConfig, catalogue, optimizer_config_adapter
from app.schemas import (
    LossRequest,
    LossResponse,
    OptimizerCatalogue,
    ResetRequest,
    TrainStepRequest,
    TrainStepResponse,
    VersionResponse,
)
from app.tensors import (
    Limits,
    Targets,
    check_json_content_type,
    images_from_body,
    optional_flag,
    optional_lr,
    reject_unknown_fields,
    resolve_loss,
    targets_from_json,
)

router = APIRouter(tags=["training"])

TRAIN_FIELDS = frozenset(TrainStepRequest.model_fields)
LOSS_FIELDS = frozenset(LossRequest.model_fields)


def _as_http_error(error: ValidationError) -> Exception:
    """Unparseable JSON is 400 as on every route; content errors are FastAPI's 422."""
    errors = error.errors(include_url=False)
    if any(item["type"] == "json_invalid" for item in errors):
        return BadRequest(f"the body is not valid JSON: {errors[0]['msg']}")
    return RequestValidationError(errors)


def _batch_and_targets(body: dict[str, Any], limits: Limits) -> tuple[Any, Targets, Any]:
    images = images_from_body(body, limits)
    targets = targets_from_json(body.get("targets"), int(images.shape[0]))
    return images, targets, resolve_loss(body.get("loss"), targets)


@router.post(
    "/train-step",
    response_class=FastJSONResponse,
    responses={200: {"model": TrainStepResponse}},
    dependencies=[AuthDep],
    openapi_extra=json_body_doc(TrainStepRequest),
)
async def train_step(request: Request, engine: EngineDep, limits: LimitsDep) -> FastJSONResponse:
    """One optimizer step: zero_grad, forward, loss, backward, step."""
    body = await read_json_body(request)
    reject_unknown_fields(body, TRAIN_FIELDS, "the body")
    lr = optional_lr(body.get("lr"))
    engine.check_lr(lr)
    images, targets, loss_name = _batch_and_targets(body, limits)
    result = await engine.train_step(images, targets.values, loss_name, lr)
    return FastJSONResponse(result.model_dump())


@router.post(
    "/loss",
    response_class=FastJSONResponse,
    responses={200: {"model": LossResponse}},
    dependencies=[AuthDep],
    openapi_extra=json_body_doc(LossRequest),
)
async def loss(request: Request, engine: EngineDep, limits: LimitsDep) -> FastJSONResponse:
    """The loss without an update; `backward` keeps gradients, `graph` returns the graph."""
    body = await read_json_body(request)
    reject_unknown_fields(body, LOSS_FIELDS, "the body")
    if "lr" in body:
        engine.check_lr(optional_lr(body["lr"]))
    backward, graph = optional_flag(body, "backward"), optional_flag(body, "graph")
    zero_grad = optional_flag(body, "zero_grad", default=True)
    images, targets, loss_name = _batch_and_targets(body, limits)
    result = await engine.loss(images, targets.values, loss_name, backward, graph, zero_grad)
    return FastJSONResponse(result.model_dump())


@router.get("/optimizers", response_model=OptimizerCatalogue)
async def list_optimizers() -> dict[str, Any]:
    """Every optimizer with torch's defaults, `lenet train`'s defaults and the page's presets."""
    return catalogue()


@router.get("/optimizer", response_model=OptimizerConfig)
async def get_optimizer(engine: EngineDep) -> dict[str, Any]:
    """The optimizer and its hyper-parameters."""
    return engine.optimizer_public()


@router.put(
    "/optimizer",
    response_model=OptimizerConfig,
    dependencies=[AuthDep],
    openapi_extra=json_body_doc(optimizer_config_adapter, "OptimizerConfig"),
)
async def put_optimizer(request: Request, engine: EngineDep) -> dict[str, Any]:
    """Switch optimizer or hyper-parameters; the optimizer state starts fresh."""
    check_json_content_type(request.headers.get("content-type"))
    try:
        config = optimizer_config_adapter.validate_json(await request.body())
    except ValidationError as error:
        raise _as_http_error(error) from error
    return await engine.set_optimizer(config)


@router.post(
    "/reset",
    response_model=VersionResponse,
    dependencies=[AuthDep],
    # The body is optional: an empty one is a reset without a seed.
    openapi_extra={
        "requestBody": {**json_body_doc(ResetRequest)["requestBody"], "required": False}
    },
)
async def reset(request: Request, engine: EngineDep) -> dict[str, int]:
    """New initial weights (seeded as LENET_SEED when `seed` is given), fresh optimizer state."""
    seed = None
    if await request.body():
        check_json_content_type(request.headers.get("content-type"))
        try:
            seed = ResetRequest.model_validate_json(await request.body(), strict=True).seed
        except ValidationError as error:
            raise _as_http_error(error) from error
    return await engine.reset(seed)
