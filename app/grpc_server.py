"""The Open Inference Protocol (KServe v2) over gRPC: `inference.GRPCInferenceService`.

Served with grpc.aio on the app's own event loop, beside HTTP, from the same engine, when
LENET_GRPC_PORT is set (see `app.main`'s lifespan). It answers what REST's /v2 answers, with
the same rules: the one model `lenet`, whose one version is the current weights' (another is
NOT_FOUND), the batch limit, LENET_MAX_BODY_BYTES as the largest message (past it grpc itself
answers RESOURCE_EXHAUSTED), and Triton's configuration, statistics and repository index, so
that `tritonclient.grpc` works unchanged. Tensors come as `raw_input_contents` (little-endian
bytes) or typed `contents.fp32_contents`; the answer uses the same form.

One error path here too: handlers raise the domain errors of `app.errors`, and `_answering`
turns each into the gRPC status that matches its HTTP one (`GRPC_CODES`).
"""

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
import torch
from pydantic import SecretStr

from app import kserve
from app.engine import Engine
from app.errors import BadRequest, LenetError, NotFound, Unauthorized
from app.protos import grpc_predict_v2_pb2 as pb
from app.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from app.settings import Settings
from app.tensors import Limits, images_from_array
from models.lenet import INPUT_SHAPE

logger = logging.getLogger("lenet.grpc")

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext

Request = TypeVar("Request")
Response = TypeVar("Response")

# The gRPC status of each HTTP status our domain errors carry.
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

_FLOAT32_BYTES = 4
_TYPED_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp64_contents",
    "bytes_contents",
)


def check_token(metadata: Sequence[tuple[str, str | bytes]], token: SecretStr | None) -> None:
    """The token rule of REST for calls that change state: when LENET_API_TOKEN is set, the
    call's metadata must carry `authorization: Bearer <token>` (else UNAUTHENTICATED).

    No call of the protocol changes anything today (inference and metadata only; Triton's
    repository load and unload are not served), so no handler calls this yet: it is here so that
    the first one that does cannot forget the rule."""
    if token is None:
        return
    expected = token.get_secret_value().encode()
    given = b""
    for key, value in metadata:
        if key.lower() == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, credentials = text.strip().partition(" ")
            if scheme.lower() == "bearer":
                given = credentials.strip().encode()
    if not hmac.compare_digest(given, expected):
        raise Unauthorized("a valid 'authorization: Bearer <token>' metadata entry is required")


def _answering(
    handler: Callable[[Any, Request, Context], Awaitable[Response]],
) -> Callable[[Any, Request, Context], Awaitable[Response]]:
    """Turn a domain error raised by `handler` into its gRPC status and message; anything else
    is logged with its traceback and answered INTERNAL, saying nothing internal."""

    @functools.wraps(handler)
    async def answering(self: Any, request: Request, context: Context) -> Response:
        try:
            return await handler(self, request, context)
        except LenetError as error:
            code = GRPC_CODES.get(error.status_code, grpc.StatusCode.UNKNOWN)
            await context.abort(code, error.detail)
        except Exception:
            logger.exception("unexpected error in %s", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        raise AssertionError("unreachable: context.abort raises")

    return answering


# ------------------------------------------------------------------ the codec


def decode_images(request: pb.ModelInferRequest, limits: Limits) -> tuple[torch.Tensor, bool]:
    """The images (N, 1, 32, 32) of an inference request, and whether they came as raw bytes
    (the answer then goes back the same way); BadRequest (INVALID_ARGUMENT) on anything wrong."""
    with kserve.bad_input_is_400():
        return _decode_images(request, limits)


def _decode_images(request: pb.ModelInferRequest, limits: Limits) -> tuple[torch.Tensor, bool]:
    name = kserve.INPUT_NAME
    if len(request.inputs) != 1:
        raise BadRequest(
            f"inputs must hold exactly one tensor, '{name}'; got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    if tensor.name != name:
        raise BadRequest(
            f"unknown input {tensor.name!r}; model '{kserve.MODEL_NAME}' has one input '{name}'"
        )
    if tensor.datatype != kserve.DATATYPE:
        raise BadRequest(
            f"input '{name}': datatype must be {kserve.DATATYPE}, got {tensor.datatype!r}"
        )
    shape = list(tensor.shape)
    if len(shape) != 4 or shape[1:] != list(INPUT_SHAPE) or shape[0] < 1:
        raise BadRequest(
            f"input '{name}': shape must be [N, {', '.join(map(str, INPUT_SHAPE))}] with N >= 1, "
            f"got {shape}"
        )
    limits.check_batch(shape[0], f"input '{name}'")
    count = int(np.prod(shape))
    raw = request.raw_input_contents
    if raw:
        if tensor.HasField("contents"):
            raise BadRequest(f"input '{name}' has both contents and raw_input_contents")
        if len(raw) != 1:
            raise BadRequest(
                f"raw_input_contents must hold one entry per input (1), got {len(raw)}"
            )
        expected = _FLOAT32_BYTES * count
        if len(raw[0]) != expected:
            raise BadRequest(
                f"input '{name}': raw_input_contents[0] must be {expected} bytes for shape {shape} "
                f"in {kserve.DATATYPE}, got {len(raw[0])}"
            )
        # bytearray: a writable copy, because torch refuses to wrap read-only memory.
        array = np.frombuffer(bytearray(raw[0]), dtype="<f4").reshape(shape)
        return images_from_array(array, f"input '{name}' raw contents", limits), True
    contents = tensor.contents
    other = [field for field in _TYPED_FIELDS if len(getattr(contents, field))]
    if other:
        raise BadRequest(f"input '{name}' is FP32: its values go in fp32_contents, not {other}")
    values = contents.fp32_contents
    if len(values) != count:
        raise BadRequest(
            f"input '{name}': shape {shape} needs {count} values in contents.fp32_contents (or "
            f"raw_input_contents), got {len(values)}"
        )
    array = np.asarray(values, dtype=np.float32).reshape(shape)
    return images_from_array(array, f"input '{name}' contents", limits), False


def check_outputs(request: pb.ModelInferRequest) -> None:
    """Refuse an output other than `logits`, or the classification extension."""
    for output in request.outputs:
        if output.name != kserve.OUTPUT_NAME:
            raise BadRequest(
                f"unknown output {output.name!r}; model '{kserve.MODEL_NAME}' has one output "
                f"'{kserve.OUTPUT_NAME}'"
            )
        classification = output.parameters.get("classification")
        if classification is not None and classification.WhichOneof("parameter_choice"):
            raise BadRequest("the classification extension is not supported; read 'logits'")


def encode_response(
    request_id: str, logits: np.ndarray, version: int, step: int, raw: bool
) -> pb.ModelInferResponse:
    """The answer: logits (N, 10) as raw little-endian float32, or as fp32_contents."""
    response = pb.ModelInferResponse(
        model_name=kserve.MODEL_NAME, model_version=str(version), id=request_id
    )
    response.parameters["step"].int64_param = step
    output = response.outputs.add(
        name=kserve.OUTPUT_NAME, datatype=kserve.DATATYPE, shape=list(logits.shape)
    )
    flat = np.ascontiguousarray(logits, dtype="<f4")
    if raw:
        response.raw_output_contents.append(flat.tobytes())
    else:
        output.contents.fp32_contents.extend(flat.reshape(-1).tolist())
    return response


def _tensor_metadata(
    tensors: list[dict[str, Any]],
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in tensors]


def _duration(value: dict[str, int]) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=value["count"], ns=value["ns"])


def statistics_message(stats: dict[str, Any]) -> pb.ModelStatistics:
    """`InferenceStatistics.as_json()` as Triton's ModelStatistics message."""
    inference = stats["inference_stats"]
    return pb.ModelStatistics(
        name=stats["name"],
        version=stats["version"],
        last_inference=stats["last_inference"],
        inference_count=stats["inference_count"],
        execution_count=stats["execution_count"],
        inference_stats=pb.InferStatistics(
            **{key: _duration(value) for key, value in inference.items()}
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=batch["batch_size"],
                compute_input=_duration(batch["compute_input"]),
                compute_infer=_duration(batch["compute_infer"]),
                compute_output=_duration(batch["compute_output"]),
            )
            for batch in stats["batch_stats"]
        ],
    )


def config_message(config: dict[str, Any]) -> pb.ModelConfig:
    """`kserve.model_config()` as Triton's ModelConfig message."""
    return pb.ModelConfig(
        name=config["name"],
        platform=config["platform"],
        max_batch_size=config["max_batch_size"],
        input=[
            pb.ModelInput(
                name=tensor["name"],
                data_type=tensor["data_type"],
                format=tensor["format"],
                dims=tensor["dims"],
            )
            for tensor in config["input"]
        ],
        output=[
            pb.ModelOutput(
                name=tensor["name"],
                data_type=tensor["data_type"],
                dims=tensor["dims"],
            )
            for tensor in config["output"]
        ],
        dynamic_batching=pb.ModelDynamicBatching(**config["dynamic_batching"]),
    )


# ------------------------------------------------------------------ the service


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Every call of `inference.GRPCInferenceService` this server answers; the others (streams,
    repository load and unload, shared memory, trace and log settings) are UNIMPLEMENTED."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        statistics: kserve.InferenceStatistics,
        server_name: str,
        server_version: str,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.limits = Limits.from_settings(settings)
        self.statistics = statistics
        self.server_name = server_name
        self.server_version = server_version

    def _ready(self) -> bool:
        return self.engine.ready and self.engine.weights_finite

    @_answering
    async def ServerLive(  # noqa: N802 - the protocol's names
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        """The server is alive."""
        return pb.ServerLiveResponse(live=True)

    @_answering
    async def ServerReady(  # noqa: N802
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        """The model is loaded, answers, and its weights are finite."""
        return pb.ServerReadyResponse(ready=self._ready())

    @_answering
    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        """The model (at the current weights' version) is ready."""
        kserve.check_model(request.name, request.version, self.engine.resident)
        return pb.ModelReadyResponse(ready=self._ready())

    @_answering
    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        """The server's name, version and extensions."""
        return pb.ServerMetadataResponse(
            **kserve.server_metadata(self.server_name, self.server_version)
        )

    @_answering
    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        """The model's versions, platform, input and output."""
        kserve.check_model(request.name, request.version, self.engine.resident)
        metadata = kserve.resident_metadata(self.engine.resident)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=_tensor_metadata(metadata["inputs"]),
            outputs=_tensor_metadata(metadata["outputs"]),
        )

    @_answering
    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        """Logits for a batch [N, 1, 32, 32] of FP32 images."""
        engine = self.engine
        version = kserve.check_model(request.model_name, request.model_version, engine.resident)
        with self.statistics.request():
            images, raw = decode_images(request, self.limits)
            check_outputs(request)
            with kserve.bad_input_is_400():  # finite pixels whose logits overflow: bad input
                prediction = await engine.predict(images, version=version)
            return encode_response(
                request.id, prediction.logits, prediction.version, prediction.step, raw
            )

    @_answering
    async def ModelConfig(  # noqa: N802
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        """Triton's model configuration."""
        kserve.check_model(request.name, request.version, self.engine.resident)
        settings = self.settings
        config = kserve.model_config(settings.max_batch_size, settings.batch_max_wait_ms)
        return pb.ModelConfigResponse(config=config_message(config))

    @_answering
    async def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        """Triton's statistics: every model (the one) when no name is given."""
        if request.name:
            kserve.check_model(request.name, request.version, self.engine.resident)
        stats = self.statistics.as_json(self.engine.version)
        return pb.ModelStatisticsResponse(model_stats=[statistics_message(stats)])

    @_answering
    async def RepositoryIndex(  # noqa: N802
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        """Triton's repository index: the one model, its version and state."""
        if request.repository_name:
            raise NotFound(
                f"unknown repository {request.repository_name!r}; this server has one, unnamed"
            )
        index = kserve.repository_index(self.engine.version, self.engine.ready, request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**model) for model in index]
        )


def bind_address(host: str, port: int) -> str:
    """`host:port` as grpc binds it (an IPv6 address in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class GrpcServer:
    """The grpc.aio server of one app: started and stopped by its lifespan."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        statistics: kserve.InferenceStatistics,
        name: str,
        version: str,
    ) -> None:
        self.settings = settings
        self.servicer = InferenceServicer(engine, settings, statistics, name, version)
        self.port: int | None = None  # the bound port, once started
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Bind LENET_HOST:LENET_GRPC_PORT and start answering (on the running event loop)."""
        settings = self.settings
        assert settings.grpc_port is not None
        limit = settings.max_body_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
            maximum_concurrent_rpcs=settings.limit_concurrency,
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.servicer, server
        )
        address = bind_address(settings.host, settings.grpc_port)
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as error:
            raise RuntimeError(
                f"cannot serve gRPC on {address} (LENET_GRPC_PORT): {error}"
            ) from error
        await server.start()
        self._server = server
        logger.info("KServe v2 over gRPC on %s", bind_address(settings.host, self.port))

    async def stop(self, grace_s: float) -> None:
        """Stop taking calls and let those in flight finish within `grace_s` seconds."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
