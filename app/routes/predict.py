"""POST /predict: logits, predictions and probabilities for a batch of images.

The hottest route is a plain Starlette `Route`, placed first in the router's list (see
`app.routes`): a one-image request spends most of its time in the framework, and FastAPI's
request handling (dependency solving, response validation) costs about as much again as
Starlette's. Being a route, it keeps the router's 405, the app's exception handlers (the one
error path) and `scope["route"]` for the metrics. FastAPI documents only its own routes, so
`openapi_route` describes the same endpoint for the schema; it is never served.
"""

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import Match, Route
from starlette.types import Scope

from app.engine import Engine
from app.errors import InvalidInput
from app.http import error_responses, json_body_doc, read_json_body
from app.schemas import PredictRequest, PredictResponse
from app.tensors import Limits, images_from_body, optional_int, reject_unknown_fields

PREDICT_PATH = "/predict"
PREDICT_FIELDS = frozenset(PredictRequest.model_fields)


def version_number(value: Any, field: str) -> int | None:
    """`version` or `min_version` of a body: a JSON integer >= 0, or absent."""
    number = optional_int(value, field)
    if number is not None and number < 0:
        raise InvalidInput(f"{field} must be >= 0, got {number}")
    return number


def requested_versions(body: dict[str, Any]) -> tuple[int | None, int | None]:
    """The body's `version` and `min_version` (the engine refuses both together)."""
    return version_number(body.get("version"), "version"), version_number(
        body.get("min_version"), "min_version"
    )


async def predict(request: Request) -> Response:
    """Logits, argmax and softmax of each image, with the weights' version."""
    engine: Engine = request.app.state.engine
    limits: Limits = request.app.state.limits
    with engine.arriving_prediction():
        body = await read_json_body(request)
        reject_unknown_fields(body, PREDICT_FIELDS, "the body")
        images = images_from_body(body, limits)
        version, min_version = requested_versions(body)
    prediction = await engine.predict(images, version, min_version)
    return Response(
        orjson.dumps(prediction.as_json(), option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
    )


class PlainRoute(Route):
    """A Starlette route that names itself in `scope["route"]`, as FastAPI's routes do (the
    metrics label requests by that route's path template)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """Starlette's matching, plus `route` in the child scope."""
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


route = PlainRoute(PREDICT_PATH, predict, methods=["POST"], name="predict")

openapi_route = APIRoute(
    PREDICT_PATH,
    predict,
    methods=["POST"],
    name="predict",
    tags=["predict"],
    response_model=PredictResponse,
    responses=error_responses(
        {
            400: "Malformed JSON",
            404: "`version` is not resident",
            409: "`min_version` not reached within LENET_MIN_VERSION_WAIT_MS",
            413: "Body over LENET_MAX_BODY_BYTES",
            415: "Not application/json",
            422: "Invalid images, or both `version` and `min_version`",
            503: "Not ready, or a device failure",
        }
    ),
    openapi_extra=json_body_doc(PredictRequest),
)
