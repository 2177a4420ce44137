"""POST /predict: logits, predictions and probabilities for a batch of images.

The hottest route is served as plain ASGI, in front of FastAPI's routing: a one-image request
spends most of its time in the framework (routing, dependency solving, request and response
objects), not in the model. It keeps FastAPI's contract: the same `{"detail": ...}` errors, 405
for other methods, a route template for the metrics, and an entry in the OpenAPI schema
(`openapi_path_item`), so documentation and schema-driven tests see it as any other route.
"""

from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from app.engine import Engine
from app.errors import LenetError
from app.http import COMPONENT_REF, DOCUMENTED_BODIES, json_body_doc
from app.schemas import PredictRequest, PredictResponse
from app.tensors import (
    Limits,
    check_json_content_type,
    images_from_body,
    parse_json_object,
    reject_unknown_fields,
)

PREDICT_PATH = "/predict"
PREDICT_FIELDS = frozenset({"inputs", "tensor"})
_JSON_HEADERS = [(b"content-type", b"application/json")]


class PredictRoute:
    """What the metrics middleware reads from `scope["route"]`: the route's path template."""

    path = PREDICT_PATH


_ROUTE = PredictRoute()


def openapi_path_item() -> dict[str, Any]:
    """The OpenAPI entry of POST /predict."""
    DOCUMENTED_BODIES[PredictResponse.__name__] = PredictResponse.model_json_schema(
        ref_template=COMPONENT_REF
    )
    error = {"application/json": {"schema": {"type": "object", "required": ["detail"]}}}
    return {
        "post": {
            "tags": ["predict"],
            "summary": "Predict",
            "description": "Logits, argmax and softmax of each image, with the weights' version.",
            "operationId": "predict_predict_post",
            **json_body_doc(PredictRequest),
            "responses": {
                "200": {
                    "description": "Successful Response",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": COMPONENT_REF.format(model="PredictResponse")}
                        }
                    },
                },
                **{
                    str(status): {"description": reason, "content": error}
                    for status, reason in (
                        (400, "Malformed JSON"),
                        (413, "Body over LENET_MAX_BODY_BYTES"),
                        (415, "Not application/json"),
                        (422, "Invalid images"),
                        (503, "Device failure"),
                    )
                },
            },
        }
    }


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("the client went away")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class PredictEndpoint:
    """Serves POST /predict; every other request goes on to `app`."""

    def __init__(self, app: ASGIApp, engine: Engine, limits: Limits) -> None:
        self.app = app
        self.engine = engine
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        scope["route"] = _ROUTE
        headers = _JSON_HEADERS
        if scope["method"] != "POST":
            status = 405
            payload = orjson.dumps({"detail": "Method Not Allowed"})
            headers = [*_JSON_HEADERS, (b"allow", b"POST")]
        else:
            try:
                status, payload = 200, await self._predict(scope, receive)
            except LenetError as error:
                status, payload = error.status_code, orjson.dumps({"detail": error.detail})
            except ConnectionResetError:
                return
        headers = [*headers, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _predict(self, scope: Scope, receive: Receive) -> bytes:
        content_type = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
                break
        with self.engine.arriving_prediction():
            check_json_content_type(content_type)
            body = parse_json_object(await _read_body(receive))
            reject_unknown_fields(body, PREDICT_FIELDS, "the body")
            images = images_from_body(body, self.limits)
        prediction = await self.engine.predict(images)
        return orjson.dumps(prediction.as_json(), option=orjson.OPT_SERIALIZE_NUMPY)
