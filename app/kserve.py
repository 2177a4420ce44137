"""The Open Inference Protocol (KServe v2) codec for the model `lenet`: bytes in, bytes out.

A request body is JSON, or, with the binary tensor extension, JSON followed by raw tensor bytes:
the `Inference-Header-Content-Length` header says how many leading bytes are JSON, and each
input that declares `parameters.binary_data_size` takes that many of the bytes after it, in
order. An answer does the same for the outputs requested with `binary_data` (or every output
when the request sets `binary_data_output`). Tensor `data` in JSON may be flat (row-major) or
nested. Every rejection is a `BadRequest` (400), as the protocol wants, and names what was wrong.
No FastAPI here: `app.routes.v2` passes the body and headers in and sends what comes back.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import torch
from pydantic import BaseModel, ConfigDict, Field

from app.errors import BadRequest, InvalidInput, NotFound
from app.json_body import HEADER_LENGTH as HEADER_LENGTH  # the v2 routes read the header
from app.json_body import (
    INFER_DATA_FIELD,
    DeferredError,
    decode_infer_body,
    nested_to_array,
)
from app.json_body import decode_content as decode_content  # the v2 routes inflate with it
from app.resident import ResidentVersions
from app.tensors import Limits, images_from_array, reject_unknown_fields
from models.lenet import INPUT_SHAPE, NUM_CLASSES

MODEL_NAME = "lenet"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DATATYPE = "FP32"
PLATFORM = "pytorch"
# Triton's names for its model configuration, statistics and repository (index) extensions.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")
BINARY_MEDIA_TYPE = "application/octet-stream"
JSON_MEDIA_TYPE = "application/json"

_REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
_INPUT_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_FIELDS = frozenset({"name", "parameters"})
_FLOAT32_BYTES = 4


# ------------------------------------------------------------------ documented shapes (OpenAPI)


class TensorMetadata(BaseModel):
    """A tensor's name, datatype and shape; -1 is a dimension of any size."""

    name: str
    datatype: str
    shape: list[int]


class ServerMetadataResponse(BaseModel):
    """GET /v2: the server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: list[str]


class ModelMetadataResponse(BaseModel):
    """GET /v2/models/lenet: the model's versions, inputs and outputs."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class LiveResponse(BaseModel):
    """GET /v2/health/live."""

    live: bool


class ReadyResponse(BaseModel):
    """GET /v2/health/ready."""

    ready: bool


class ModelReadyResponse(BaseModel):
    """GET /v2/models/lenet/ready."""

    name: str
    ready: bool


class ErrorResponse(BaseModel):
    """Every error on /v2, in the protocol's shape."""

    error: str


class InferInputTensor(BaseModel):
    """The one input: `input`, FP32, [N, 1, 32, 32]; `data` is flat or nested, or absent when
    `parameters.binary_data_size` places the raw little-endian bytes after the JSON."""

    model_config = ConfigDict(extra="forbid")

    name: str = INPUT_NAME
    shape: list[int]
    datatype: str = DATATYPE
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferRequestedOutput(BaseModel):
    """An output to return; `parameters.binary_data: true` returns it as raw bytes."""

    model_config = ConfigDict(extra="forbid")

    name: str = OUTPUT_NAME
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """POST /v2/models/lenet/infer (the JSON part, when the binary extension is used)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_output: true` returns every output as raw bytes"
    )
    inputs: list[InferInputTensor]
    outputs: list[InferRequestedOutput] | None = None


class InferOutputTensor(BaseModel):
    """An output tensor: flat row-major `data`, or `parameters.binary_data_size` raw bytes."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    """The answer: `model_version` is the version of the weights that computed it."""

    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferOutputTensor]


# ------------------------------------------------------------------ metadata


def server_metadata(name: str, version: str) -> dict[str, Any]:
    """The body of GET /v2."""
    return {"name": name, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(versions: list[int]) -> dict[str, Any]:
    """The body of GET /v2/models/lenet: `versions` are the resident ones, newest first."""
    return {
        "name": MODEL_NAME,
        "versions": [str(version) for version in versions],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, *INPUT_SHAPE]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": [-1, NUM_CLASSES]}],
    }


def check_model(
    model_name: str, model_version: str | None, resident: ResidentVersions
) -> int | None:
    """Refuse (404) a model other than `lenet`, or a version that is not resident; answers the
    version asked for as a number (None, or "" from gRPC, asks for the current one)."""
    if model_name != MODEL_NAME:
        raise NotFound(f"unknown model {model_name!r}; this server serves {MODEL_NAME!r}")
    if not model_version:
        return None
    if model_version.isascii() and model_version.isdigit():
        version = int(model_version)
        if any(entry.version == version for entry in resident.newest_first()):
            return version
    raise NotFound(
        f"version {model_version[:40]!r} of model {MODEL_NAME!r} is not available (not "
        f"resident); {resident.range_text()}"
    )


def resident_metadata(resident: ResidentVersions) -> dict[str, Any]:
    """GET /v2/models/lenet for the resident versions, newest first."""
    return model_metadata([entry.version for entry in resident.newest_first()])


def model_config(max_batch_size: int, max_queue_delay_ms: float) -> dict[str, Any]:
    """Triton's model configuration of `lenet`, as GET /v2/models/lenet/config answers it (dims
    leave out the batch dimension, as Triton's do when max_batch_size is above 0)."""
    return {
        "name": MODEL_NAME,
        "platform": PLATFORM,
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": INPUT_NAME,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NCHW",
                "dims": list(INPUT_SHAPE),
            }
        ],
        "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [NUM_CLASSES]}],
        "dynamic_batching": {"max_queue_delay_microseconds": round(max_queue_delay_ms * 1000)},
    }


def repository_index(weights_version: int, ready: bool, ready_only: bool) -> list[dict[str, str]]:
    """Triton's repository index: the one model at the current weights' version, READY or
    UNAVAILABLE (then left out when `ready_only`)."""
    if ready:
        return [{"name": MODEL_NAME, "version": str(weights_version), "state": "READY"}]
    if ready_only:
        return []
    return [
        {
            "name": MODEL_NAME,
            "version": str(weights_version),
            "state": "UNAVAILABLE",
            "reason": "the model is starting or shutting down",
        }
    ]


# ------------------------------------------------------------------ statistics


@dataclass
class Duration:
    """Triton's StatisticDuration: how many, and their cumulative nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        """Count `count` more, `seconds` each."""
        self.count += count
        self.ns += count * round(seconds * 1e9)

    def as_json(self) -> dict[str, int]:
        """{"count", "ns"}."""
        return {"count": self.count, "ns": self.ns}


@dataclass
class InferenceStatistics:
    """What Triton's statistics extension reports for `lenet`, measured since start-up.

    Two feeds: `observe_batch`, a batch observer of the engine (see `app.batching`), sees every
    forward pass of the batcher, whatever route asked (/predict, /predict/image, v2 over REST
    and gRPC): executions, images, each request's queue wait, and the pass's compute time, which
    each request in the batch is charged in full, as Triton does. `request()` wraps each v2
    inference request (REST and gRPC) from its decoding to its answer: success or fail, and the
    request's whole duration. Everything runs on the event loop, so nothing here needs a lock.
    """

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0  # images run through the network
    execution_count: int = 0  # forward passes
    last_inference_ms: int = 0  # milliseconds since the epoch
    batches: dict[int, Duration] = field(default_factory=dict)  # per batch size

    def observe_batch(self, images: int, waits: list[float], compute_s: float) -> None:
        """A batch observer: one forward pass of `images` images for len(waits) requests."""
        self.execution_count += 1
        self.inference_count += images
        self.last_inference_ms = time.time_ns() // 1_000_000
        for wait in waits:
            self.queue.add(wait)
        self.compute_infer.add(compute_s, count=len(waits))
        self.batches.setdefault(images, Duration()).add(compute_s)

    @contextmanager
    def request(self) -> Iterator[None]:
        """Time one v2 inference request: a success if the block returns, a fail if it raises,
        and neither if it names an unknown model or version (it never reached the model)."""
        started = time.perf_counter()
        try:
            yield
        except NotFound:
            raise
        except BaseException:
            self.fail.add(time.perf_counter() - started)
            raise
        self.success.add(time.perf_counter() - started)

    def as_json(self, weights_version: int) -> dict[str, Any]:
        """Triton's ModelStatistics of `lenet`, under the current weights' version."""
        zero = Duration().as_json()
        return {
            "name": MODEL_NAME,
            "version": str(weights_version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                # Decoding and encoding happen outside the model's execution, in the request.
                "compute_input": zero,
                "compute_infer": self.compute_infer.as_json(),
                "compute_output": zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": zero,
                    "compute_infer": duration.as_json(),
                    "compute_output": zero,
                }
                for size, duration in sorted(self.batches.items())
            ],
        }


# ------------------------------------------------------------------ requests


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request: the images and how to answer."""

    images: torch.Tensor  # (N, 1, 32, 32) float32, finite
    request_id: str | None
    binary_output: bool


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object")
    return value


def _optional_bool(parameters: dict[str, Any], name: str, where: str) -> bool | None:
    value = parameters.get(name)
    if value is not None and type(value) is not bool:
        raise BadRequest(f"{where}.parameters.{name} must be true or false")
    return value


def _input_shape(value: Any, limits: Limits) -> list[int]:
    """The declared input shape, which must be [N, 1, 32, 32] with 1 <= N <= the batch limit."""
    if not isinstance(value, list) or any(type(dim) is not int for dim in value):
        raise BadRequest(f"input '{INPUT_NAME}': shape must be an array of integers")
    if len(value) != 4 or value[1:] != list(INPUT_SHAPE) or value[0] < 1:
        raise BadRequest(
            f"input '{INPUT_NAME}': shape must be [N, {', '.join(map(str, INPUT_SHAPE))}] with "
            f"N >= 1, got {value}"
        )
    limits.check_batch(value[0], f"input '{INPUT_NAME}'")  # InvalidInput: 400 below
    return value


def _images_from_json_data(data: Any, shape: list[int], limits: Limits) -> torch.Tensor:
    """`data` as a flat row-major array or nested to `shape` -> (N, 1, 32, 32)."""
    field = INFER_DATA_FIELD
    if isinstance(data, DeferredError):
        raise data.error
    array = data if isinstance(data, np.ndarray) else nested_to_array(data, field, len(shape))
    count = int(np.prod(shape))
    if array.ndim == 1 and array.size == count:
        array = array.reshape(shape)
    elif list(array.shape) != shape:
        raise BadRequest(
            f"{field} has shape {list(array.shape)} ({array.size} values); shape {shape} needs "
            f"{count} values, flat or nested"
        )
    return images_from_array(array, field, limits)


def _images_from_binary(chunk: memoryview, shape: list[int], limits: Limits) -> torch.Tensor:
    """Raw little-endian float32 bytes -> (N, 1, 32, 32)."""
    # bytearray: a writable copy, because torch refuses to wrap read-only memory.
    array = np.frombuffer(bytearray(chunk), dtype="<f4").reshape(shape)
    return images_from_array(array, f"input '{INPUT_NAME}' binary data", limits)


def _decode_input(
    tensor: dict[str, Any], binary: memoryview, limits: Limits
) -> tuple[torch.Tensor, int]:
    """One input tensor -> images, and how many bytes of `binary` it used."""
    reject_unknown_fields(tensor, _INPUT_FIELDS, "an input")
    name = tensor.get("name")
    if name != INPUT_NAME:
        raise BadRequest(
            f"unknown input {name!r}; model '{MODEL_NAME}' has one input '{INPUT_NAME}'"
        )
    datatype = tensor.get("datatype")
    if datatype != DATATYPE:
        raise BadRequest(f"input '{INPUT_NAME}': datatype must be {DATATYPE}, got {datatype!r}")
    shape = _input_shape(tensor.get("shape"), limits)
    parameters = _object(tensor.get("parameters", {}), f"input '{INPUT_NAME}' parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise BadRequest(
                f"input '{INPUT_NAME}' needs 'data' or parameters.binary_data_size "
                "(the binary tensor extension)"
            )
        return _images_from_json_data(tensor["data"], shape, limits), 0
    if "data" in tensor:
        raise BadRequest(f"input '{INPUT_NAME}' has both 'data' and a binary_data_size")
    expected = _FLOAT32_BYTES * int(np.prod(shape))
    if type(size) is not int or size != expected:
        raise BadRequest(
            f"input '{INPUT_NAME}': binary_data_size must be {expected} for shape {shape} in "
            f"{DATATYPE}, got {size!r}"
        )
    if size > len(binary):
        raise BadRequest(
            f"input '{INPUT_NAME}': binary_data_size is {size} but only {len(binary)} bytes "
            f"follow the JSON (see {HEADER_LENGTH})"
        )
    return _images_from_binary(binary[:size], shape, limits), size


def _binary_output(request: dict[str, Any], parameters: dict[str, Any]) -> bool:
    """Whether `logits` goes back as raw bytes."""
    default = bool(_optional_bool(parameters, "binary_data_output", "the request"))
    outputs = request.get("outputs")
    if outputs is None:
        return default
    if not isinstance(outputs, list):
        raise BadRequest("outputs must be an array")
    binary = default
    for output in outputs:
        output = _object(output, "each output")
        reject_unknown_fields(output, _OUTPUT_FIELDS, "an output")
        if output.get("name") != OUTPUT_NAME:
            raise BadRequest(
                f"unknown output {output.get('name')!r}; model '{MODEL_NAME}' has one output "
                f"'{OUTPUT_NAME}'"
            )
        output_parameters = _object(output.get("parameters", {}), "output parameters")
        if output_parameters.get("classification"):
            raise BadRequest("the classification extension is not supported; read 'logits'")
        chosen = _optional_bool(output_parameters, "binary_data", f"output '{OUTPUT_NAME}'")
        binary = default if chosen is None else chosen
    return binary


def parse_infer_request(body: bytes, header_length: str | None, limits: Limits) -> InferRequest:
    """Decode an inference request (JSON, or JSON and binary tensors); 400 on anything wrong."""
    with bad_input_is_400():
        request, binary = decode_infer_body(body, None, header_length, len(body))
    return infer_request_from(request, binary, limits)


def infer_request_from(request: Any, binary: bytes, limits: Limits) -> InferRequest:
    """The images and answer options of a request `decode_infer_body` has parsed."""
    with bad_input_is_400():
        return _parse_request(request, memoryview(binary), limits)


@contextmanager
def bad_input_is_400() -> Iterator[None]:
    """Within the block, an `InvalidInput` (422: the shared tensor checks, or the engine
    refusing an input whose outputs overflow) becomes a `BadRequest`: the protocol calls every
    bad input a 400."""
    try:
        yield
    except InvalidInput as error:
        raise BadRequest(error.detail) from error


def _parse_request(request: Any, binary: memoryview, limits: Limits) -> InferRequest:
    request = _object(request, "the inference request")
    reject_unknown_fields(request, _REQUEST_FIELDS, "the inference request")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("id must be a string")
    parameters = _object(request.get("parameters", {}), "the request's parameters")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise BadRequest(f"inputs must be an array of exactly one tensor, '{INPUT_NAME}'")
    images, used = _decode_input(_object(inputs[0], "an input"), binary, limits)
    if used != len(binary):
        raise BadRequest(
            f"{len(binary) - used} bytes after the JSON are not claimed by any input's "
            "binary_data_size"
        )
    return InferRequest(images, request_id, _binary_output(request, parameters))


# ------------------------------------------------------------------ answers


@dataclass(frozen=True)
class EncodedResponse:
    """An answer's body, media type and, for binary outputs, the JSON header's length."""

    body: bytes
    media_type: str
    header_length: int | None


def encode_infer_response(
    request: InferRequest, logits: np.ndarray, weights_version: int, step: int
) -> EncodedResponse:
    """The answer to `request`: logits (N, 10) as JSON `data` or as raw float32 bytes."""
    output: dict[str, Any] = {
        "name": OUTPUT_NAME,
        "datatype": DATATYPE,
        "shape": list(logits.shape),
    }
    raw = b""
    if request.binary_output:
        raw = np.ascontiguousarray(logits, dtype="<f4").tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = np.ascontiguousarray(logits).reshape(-1)
    answer: dict[str, Any] = {
        "model_name": MODEL_NAME,
        "model_version": str(weights_version),
        "parameters": {"step": step},
        "outputs": [output],
    }
    if request.request_id is not None:
        answer["id"] = request.request_id
    header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not request.binary_output:
        return EncodedResponse(header, JSON_MEDIA_TYPE, None)
    return EncodedResponse(header + raw, BINARY_MEDIA_TYPE, len(header))
