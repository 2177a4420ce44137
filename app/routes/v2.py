"""The Open Inference Protocol (KServe v2) over REST for the model `lenet`.

Health, server and model metadata, and inference with JSON `data` or the binary tensor
extension, so that standard v2 clients (tritonclient, KServe's) work unchanged. Every error here
is `{"error": "..."}` (see `app.main`): bad input 400, an unknown model or version 404. A model
version is the weights' version: any resident one (GET /versions) can be asked for by number,
and `GET /v2/models/lenet` lists them, newest first.
"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app import kserve
from app.engine import Engine
from app.http import EngineDep, FastJSONResponse, LimitsDep, json_body_doc
from app.json_body import BodyDecoder
from app.routes.triton import counted
from app.tensors import Limits

router = APIRouter(prefix="/v2", tags=["v2"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": kserve.ErrorResponse, "description": "bad request"},
    404: {"model": kserve.ErrorResponse, "description": "unknown model or version"},
}

MODEL = "/models/{model_name}"
VERSIONED = "/models/{model_name}/versions/{model_version}"


@router.get("/health/live", response_model=kserve.LiveResponse)
async def server_live() -> dict[str, bool]:
    """The server is alive."""
    return {"live": True}


@router.get(
    "/health/ready",
    response_model=kserve.ReadyResponse,
    responses={503: {"model": kserve.ReadyResponse, "description": "not ready"}},
)
async def server_ready(engine: EngineDep) -> FastJSONResponse:
    """The model is loaded, answers, and its weights are finite (else 503)."""
    ready = engine.ready and engine.weights_finite
    return FastJSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("", response_model=kserve.ServerMetadataResponse)
async def server_metadata(request: Request) -> dict[str, Any]:
    """The server's name, version and protocol extensions."""
    return kserve.server_metadata(request.app.title, request.app.version)


@router.get(MODEL, response_model=kserve.ModelMetadataResponse, responses={**_ERRORS})
async def model_metadata(engine: EngineDep, model_name: str) -> dict[str, Any]:
    """The resident versions (newest first), input `input` FP32 [-1, 1, 32, 32] and output
    `logits` FP32 [-1, 10]."""
    kserve.check_model(model_name, None, engine.resident)
    return kserve.resident_metadata(engine.resident)


@router.get(VERSIONED, response_model=kserve.ModelMetadataResponse, responses={**_ERRORS})
async def model_version_metadata(
    engine: EngineDep, model_name: str, model_version: str
) -> dict[str, Any]:
    """The model's metadata, if `model_version` is resident (else 404)."""
    kserve.check_model(model_name, model_version, engine.resident)
    return kserve.resident_metadata(engine.resident)


def _model_ready(engine: Engine, model_name: str, model_version: str | None) -> FastJSONResponse:
    kserve.check_model(model_name, model_version, engine.resident)
    ready = engine.ready and engine.weights_finite
    return FastJSONResponse(
        {"name": kserve.MODEL_NAME, "ready": ready}, status_code=200 if ready else 503
    )


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    503: {"model": kserve.ModelReadyResponse, "description": "not ready"},
}


@router.get(MODEL + "/ready", response_model=kserve.ModelReadyResponse, responses=_READY_RESPONSES)
async def model_ready(engine: EngineDep, model_name: str) -> FastJSONResponse:
    """The model is ready for inference (else 503)."""
    return _model_ready(engine, model_name, None)


@router.get(
    VERSIONED + "/ready", response_model=kserve.ModelReadyResponse, responses=_READY_RESPONSES
)
async def model_version_ready(
    engine: EngineDep, model_name: str, model_version: str
) -> FastJSONResponse:
    """The model is ready, if `model_version` is resident (else 404)."""
    return _model_ready(engine, model_name, model_version)


_INFER_DOC = json_body_doc(kserve.InferenceRequest)
_INFER_DOC["requestBody"]["content"][kserve.BINARY_MEDIA_TYPE] = {
    "schema": {"type": "string", "format": "binary"}
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": kserve.InferenceResponse,
        "description": "logits as JSON, or with binary outputs the JSON header "
        f"({kserve.HEADER_LENGTH} bytes) followed by raw little-endian float32",
        "content": {kserve.BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    },
    **_ERRORS,
    413: {"model": kserve.ErrorResponse, "description": "body over LENET_MAX_BODY_BYTES"},
    415: {"model": kserve.ErrorResponse, "description": "unsupported Content-Encoding"},
}


async def _infer(
    request: Request,
    engine: Engine,
    limits: Limits,
    model_name: str,
    model_version: str | None,
) -> Response:
    version = kserve.check_model(model_name, model_version, engine.resident)
    decoder: BodyDecoder = request.app.state.body_decoder
    with engine.arriving_prediction():
        parsed, binary = await decoder.decode_infer(
            await request.body(),
            request.headers.get("content-encoding"),
            request.headers.get(kserve.HEADER_LENGTH),
        )
        decoded = kserve.infer_request_from(parsed, binary, limits)
    with kserve.bad_input_is_400():  # finite pixels whose logits overflow: bad input
        prediction = await engine.predict(decoded.images, version=version)
    answer = kserve.encode_infer_response(
        decoded, prediction.logits, prediction.version, prediction.step
    )
    headers = None
    if answer.header_length is not None:
        headers = {kserve.HEADER_LENGTH: str(answer.header_length)}
    return Response(answer.body, media_type=answer.media_type, headers=headers)


@router.post(MODEL + "/infer", responses=_INFER_RESPONSES, openapi_extra=_INFER_DOC)
@counted
async def infer(
    request: Request, engine: EngineDep, limits: LimitsDep, model_name: str
) -> Response:
    """Logits for a batch [N, 1, 32, 32] of FP32 images, as JSON or binary tensors."""
    return await _infer(request, engine, limits, model_name, None)


@router.post(VERSIONED + "/infer", responses=_INFER_RESPONSES, openapi_extra=_INFER_DOC)
@counted
async def infer_version(
    request: Request,
    engine: EngineDep,
    limits: LimitsDep,
    model_name: str,
    model_version: str,
) -> Response:
    """Inference from exactly resident version `model_version` (else 404)."""
    return await _infer(request, engine, limits, model_name, model_version)
