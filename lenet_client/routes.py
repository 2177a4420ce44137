"""lenet-serve's routes as data: what each request sends and how its answer is read.

Both clients (`LenetClient`, `AsyncLenetClient`) send these `Call`s, so a route is described
once: adding one is a builder here and a one-line method in each client. The answers are the
server's own response models (`app.schemas`, `app.optimizers`: pydantic only, no torch), so the
client reads exactly what the OpenAPI schema documents.
"""

import base64
import mimetypes
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeAlias, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
import orjson
from pydantic import BaseModel, TypeAdapter

from app.optimizers import OptimizerConfig, optimizer_config_adapter
from app.schemas import (
    BackwardResponse,
    CheckpointListResponse,
    CheckpointResponse,
    ExplainResponse,
    HealthResponse,
    LossResponse,
    ModelResponse,
    OptimizerCatalogue,
    ParamsResponse,
    PredictResponse,
    StepResponse,
    TrainStepResponse,
    VersionResponse,
    VersionsResponse,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# An image batch as POST /predict takes it: [H, W], [N, H, W] or [N, 1, H, W], as a numpy array
# or nested lists of numbers.
Images: TypeAlias = np.ndarray | Sequence[Any]
# N class indices, or N x 10 target vectors (a length-10 vector when N is 1).
Targets: TypeAlias = np.ndarray | Sequence[Any]
# N x 10 gradients of the outputs for POST /backward (a length-10 vector when N is 1).
GradOutputs: TypeAlias = np.ndarray | Sequence[Any]
LossName = Literal["cross_entropy", "mse"]
# An image file for POST /predict/image: a path, or (filename, bytes).
ImageFile: TypeAlias = Path | tuple[str, bytes]

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_checkpoint_list = TypeAdapter(CheckpointListResponse)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request of the API and the function that reads its (successful) answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    json: Any = None  # a body to send as JSON (numpy arrays allowed)
    content: bytes | None = None  # a raw body, sent as application/octet-stream
    params: dict[str, Any] = field(default_factory=dict)
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None

    def request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `httpx.Client.request` for this call."""
        kwargs: dict[str, Any] = {"params": self.params or None}
        if self.json is not None:
            kwargs["content"] = orjson.dumps(self.json, option=_JSON_OPTIONS)
            kwargs["headers"] = {"Content-Type": "application/json"}
        elif self.content is not None:
            kwargs["content"] = self.content
            kwargs["headers"] = {"Content-Type": "application/octet-stream"}
        elif self.files is not None:
            kwargs["files"] = self.files
        return kwargs


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate_json(response.content)


def _optimizer(response: httpx.Response) -> OptimizerConfig:
    return optimizer_config_adapter.validate_json(response.content)


# ---------------------------------------------------------------- encoding


def tensor_field(images: np.ndarray) -> dict[str, Any]:
    """An array of rank 2-4 -> the request's `tensor` form: its shape, base64 little-endian f4."""
    array = np.ascontiguousarray(images, dtype="<f4")
    return {
        "shape": list(array.shape),
        "dtype": "float32",
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def image_fields(images: Images, binary: bool) -> dict[str, Any]:
    """The batch as `{"inputs": nested numbers}`, or with `binary` as `{"tensor": base64}`."""
    if binary:
        return {"tensor": tensor_field(np.asarray(images))}
    if isinstance(images, np.ndarray):
        # orjson writes numpy arrays natively, but only C-contiguous ones.
        return {"inputs": np.ascontiguousarray(images)}
    return {"inputs": images}


def _targets(targets: Targets) -> Any:
    return np.ascontiguousarray(targets) if isinstance(targets, np.ndarray) else targets


def _training_body(
    images: Images, targets: Targets, loss: LossName | None, lr: float | None, binary: bool
) -> dict[str, Any]:
    body = {**image_fields(images, binary), "targets": _targets(targets)}
    if loss is not None:
        body["loss"] = loss
    if lr is not None:
        body["lr"] = lr
    return body


def _upload(index: int, image: ImageFile) -> tuple[str, tuple[str, bytes, str]]:
    name, data = (image.name, image.read_bytes()) if isinstance(image, Path) else image
    mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return ("files", (name or f"image-{index}", data, mime))


# ---------------------------------------------------------------- one builder per route


def _pinning(version: int | None, min_version: int | None) -> dict[str, int]:
    """The `version` (exactly those weights) and `min_version` (read-your-writes) fields."""
    fields = {"version": version, "min_version": min_version}
    return {name: value for name, value in fields.items() if value is not None}


def predict(
    images: Images, binary: bool, version: int | None = None, min_version: int | None = None
) -> Call[PredictResponse]:
    """POST /predict."""
    body = {**image_fields(images, binary), **_pinning(version, min_version)}
    return Call("POST", "/predict", _model(PredictResponse), json=body)


def predict_image(
    files: Sequence[ImageFile],
    invert: bool,
    version: int | None = None,
    min_version: int | None = None,
) -> Call[PredictResponse]:
    """POST /predict/image, the files under the field `files`."""
    uploads = [_upload(index, image) for index, image in enumerate(files)]
    params: dict[str, Any] = {"invert": "true"} if invert else {}
    params.update(_pinning(version, min_version))
    return Call("POST", "/predict/image", _model(PredictResponse), params=params, files=uploads)


def versions() -> Call[VersionsResponse]:
    """GET /versions."""
    return Call("GET", "/versions", _model(VersionsResponse))


def train_step(
    images: Images, targets: Targets, loss: LossName | None, lr: float | None, binary: bool
) -> Call[TrainStepResponse]:
    """POST /train-step."""
    body = _training_body(images, targets, loss, lr, binary)
    return Call("POST", "/train-step", _model(TrainStepResponse), json=body)


def loss(
    images: Images,
    targets: Targets,
    loss: LossName | None,
    lr: float | None,
    backward: bool,
    graph: bool,
    binary: bool,
    zero_grad: bool = True,
) -> Call[LossResponse]:
    """POST /loss."""
    body = _training_body(images, targets, loss, lr, binary)
    body.update(backward=backward, graph=graph, zero_grad=zero_grad)
    return Call("POST", "/loss", _model(LossResponse), json=body)


def zero_grad() -> Call[VersionResponse]:
    """POST /zero-grad."""
    return Call("POST", "/zero-grad", _model(VersionResponse))


def backward(
    images: Images, grad_outputs: GradOutputs, zero_grad: bool, binary: bool
) -> Call[BackwardResponse]:
    """POST /backward."""
    body = {
        **image_fields(images, binary),
        "grad_outputs": _targets(grad_outputs),
        "zero_grad": zero_grad,
    }
    return Call("POST", "/backward", _model(BackwardResponse), json=body)


def step(lr: float | None) -> Call[StepResponse]:
    """POST /step (with no body when `lr` is None: the optimizer's own lr)."""
    return Call("POST", "/step", _model(StepResponse), json={} if lr is None else {"lr": lr})


def explain(
    image: Images,
    target: int | None,
    binary: bool,
    version: int | None = None,
    min_version: int | None = None,
) -> Call[ExplainResponse]:
    """POST /explain."""
    body = {**image_fields(image, binary), **_pinning(version, min_version)}
    if target is not None:
        body["target"] = target
    return Call("POST", "/explain", _model(ExplainResponse), json=body)


def params(names: Sequence[str] | None, values: bool, grads: bool) -> Call[ParamsResponse]:
    """GET /params."""
    query: dict[str, Any] = {"values": str(values).lower(), "grads": str(grads).lower()}
    if names is not None:
        query["name"] = list(names)
    return Call("GET", "/params", _model(ParamsResponse), params=query)


def model() -> Call[ModelResponse]:
    """GET /model."""
    return Call("GET", "/model", _model(ModelResponse))


def optimizer() -> Call[OptimizerConfig]:
    """GET /optimizer."""
    return Call("GET", "/optimizer", _optimizer)


def set_optimizer(config: Mapping[str, Any] | BaseModel) -> Call[OptimizerConfig]:
    """PUT /optimizer with a flat body; fields left out take torch's defaults."""
    body = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    return Call("PUT", "/optimizer", _optimizer, json=body)


def optimizers() -> Call[OptimizerCatalogue]:
    """GET /optimizers."""
    return Call("GET", "/optimizers", _model(OptimizerCatalogue))


def reset(seed: int | None) -> Call[VersionResponse]:
    """POST /reset."""
    return Call("POST", "/reset", _model(VersionResponse), json={"seed": seed})


def save_checkpoint() -> Call[CheckpointResponse]:
    """POST /checkpoints."""
    return Call("POST", "/checkpoints", _model(CheckpointResponse))


def checkpoints() -> Call[list[CheckpointResponse]]:
    """GET /checkpoints, newest first."""

    def read(response: httpx.Response) -> list[CheckpointResponse]:
        return _checkpoint_list.validate_json(response.content).checkpoints

    return Call("GET", "/checkpoints", read)


def restore_checkpoint(checkpoint_id: str) -> Call[VersionResponse]:
    """POST /checkpoints/{id}/restore."""
    path = f"/checkpoints/{_path_segment(checkpoint_id)}/restore"
    return Call("POST", path, _model(VersionResponse))


def export_weights() -> Call[bytes]:
    """GET /params/export: a safetensors file."""
    return Call("GET", "/params/export", lambda response: response.content)


def import_weights(data: bytes) -> Call[VersionResponse]:
    """PUT /params/import with a safetensors file as the raw body."""
    return Call("PUT", "/params/import", _model(VersionResponse), content=data)


def health() -> Call[HealthResponse]:
    """GET /healthz."""
    return Call("GET", "/healthz", _model(HealthResponse))


def ready() -> Call[HealthResponse]:
    """GET /readyz (503 while the model is not ready)."""
    return Call("GET", "/readyz", _model(HealthResponse))


def metrics() -> Call[str]:
    """GET /metrics: Prometheus text."""
    return Call("GET", "/metrics", lambda response: response.text)


def _path_segment(text: str) -> str:
    # Ids are opaque: escape them, so that one holding '/' or '?' cannot name another route.
    return quote(text, safe="")
