"""A typed Python client of lenet-serve, sync (`LenetClient`) and async (`AsyncLenetClient`).

Both speak HTTP through httpx and import no torch, so they run anywhere the service can be
reached. Every answer is the server's own pydantic response model; every refusal is a
`LenetHTTPError` carrying the HTTP status and the server's `detail`.

    with LenetClient("http://127.0.0.1:8000", token="...") as client:
        answer = client.predict(np.zeros((1, 32, 32), dtype=np.float32))
        print(answer.predictions, answer.version)
"""

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from app.optimizers import OptimizerConfig
from app.schemas import (
    BackwardResponse,
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
from lenet_client import routes
from lenet_client.routes import Call, GradOutputs, ImageFile, Images, LossName, Targets

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0


class LenetError(Exception):
    """Anything this client raises about the service."""


class LenetConnectionError(LenetError):
    """The service could not be reached, or did not answer in time."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class LenetHTTPError(LenetError):
    """The service answered with an error status; `detail` is its FastAPI `detail` (a string,
    or a list of `{"loc", "msg", ...}` for validation errors), or the body's text."""

    def __init__(self, method: str, path: str, status: int, detail: Any) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail
        reason = httpx.codes.get_reason_phrase(status)
        super().__init__(f"{method} {path}: {status} {reason}: {describe_detail(detail)}")


def describe_detail(detail: Any) -> str:
    """A FastAPI `detail` as one line: validation errors as `loc: msg; ...`."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                where = ".".join(str(part) for part in item.get("loc", []))
                parts.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def _error_detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        # {"detail"} on API routes; GET /readyz's 503 says {"status": "starting"}.
        for key in ("detail", "status"):
            if key in body:
                return body[key]
    return body


def _answer(call: Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise LenetHTTPError(call.method, call.path, response.status_code, _error_detail(response))
    return call.read(response)


def _transport_error(url: str, call: Call[Any], error: httpx.HTTPError) -> LenetConnectionError:
    if isinstance(error, httpx.ConnectError):
        message = f"cannot connect to {url} ({error}); is `lenet serve` running there?"
    elif isinstance(error, httpx.TimeoutException):
        message = f"{call.method} {url}{call.path} timed out ({error})"
    else:
        message = f"{call.method} {url}{call.path} failed: {error!r}"
    return LenetConnectionError(message, url)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class LenetClient:
    """lenet-serve over HTTP, blocking. Use as a context manager, or call `close()`."""

    def __init__(
        self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._http = httpx.Client(base_url=self.url, headers=_headers(token), timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send one request and read its answer; errors become `LenetError`s."""
        try:
            response = self._http.request(call.method, call.path, **call.request_kwargs())
        except httpx.HTTPError as error:
            raise _transport_error(self.url, call, error) from error
        return _answer(call, response)

    def predict(
        self,
        images: Images,
        *,
        binary: bool = False,
        version: int | None = None,
        min_version: int | None = None,
    ) -> PredictResponse:
        """POST /predict: logits, argmax and softmax per image; `binary` sends base64 float32;
        `version` pins the weights, `min_version` waits for them (read-your-writes)."""
        return self.send(routes.predict(images, binary, version, min_version))

    def versions(self) -> VersionsResponse:
        """GET /versions: the current version and the resident ones, newest first."""
        return self.send(routes.versions())

    def predict_image(
        self,
        files: Sequence[ImageFile],
        *,
        invert: bool = False,
        version: int | None = None,
        min_version: int | None = None,
    ) -> PredictResponse:
        """POST /predict/image: PNG or JPEG files, as paths or (filename, bytes)."""
        return self.send(routes.predict_image(files, invert, version, min_version))

    def train_step(
        self,
        images: Images,
        targets: Targets,
        *,
        loss: LossName | None = None,
        lr: float | None = None,
        binary: bool = False,
    ) -> TrainStepResponse:
        """POST /train-step: one optimizer step; `lr` for this step only."""
        return self.send(routes.train_step(images, targets, loss, lr, binary))

    def loss(
        self,
        images: Images,
        targets: Targets,
        *,
        loss: LossName | None = None,
        lr: float | None = None,
        backward: bool = False,
        graph: bool = False,
        binary: bool = False,
        zero_grad: bool = True,
    ) -> LossResponse:
        """POST /loss: the loss without an update; gradients kept with `backward` (added to
        those there when `zero_grad` is false)."""
        return self.send(routes.loss(images, targets, loss, lr, backward, graph, binary, zero_grad))

    def zero_grad(self) -> VersionResponse:
        """POST /zero-grad: every gradient becomes None, as `net.zero_grad()`."""
        return self.send(routes.zero_grad())

    def backward(
        self,
        images: Images,
        grad_outputs: GradOutputs,
        *,
        zero_grad: bool = True,
        binary: bool = False,
    ) -> BackwardResponse:
        """POST /backward: `net(images).backward(grad_outputs)`; the gradients stay."""
        return self.send(routes.backward(images, grad_outputs, zero_grad, binary))

    def step(self, *, lr: float | None = None) -> StepResponse:
        """POST /step: `optimizer.step()` on the gradients there; `lr` for this step only."""
        return self.send(routes.step(lr))

    def explain(
        self,
        image: Images,
        *,
        target: int | None = None,
        binary: bool = False,
        version: int | None = None,
        min_version: int | None = None,
    ) -> ExplainResponse:
        """POST /explain: every layer's output and the saliency of `target` (default: the
        predicted class) for one image; changes nothing."""
        return self.send(routes.explain(image, target, binary, version, min_version))

    def params(
        self, names: Sequence[str] | None = None, *, values: bool = False, grads: bool = False
    ) -> ParamsResponse:
        """GET /params: statistics of the named parameters (default all), values on request."""
        return self.send(routes.params(names, values, grads))

    def model(self) -> ModelResponse:
        """GET /model: the network, its version and step."""
        return self.send(routes.model())

    def optimizer(self) -> OptimizerConfig:
        """GET /optimizer."""
        return self.send(routes.optimizer())

    def set_optimizer(self, config: Mapping[str, Any] | BaseModel) -> OptimizerConfig:
        """PUT /optimizer with a flat body such as `{"name": "adam", "lr": 1e-3}`."""
        return self.send(routes.set_optimizer(config))

    def optimizers(self) -> OptimizerCatalogue:
        """GET /optimizers: each optimizer's torch and `lenet train` defaults, the presets."""
        return self.send(routes.optimizers())

    def reset(self, seed: int | None = None) -> VersionResponse:
        """POST /reset: new initial weights (seeded when `seed` is given), fresh optimizer."""
        return self.send(routes.reset(seed))

    def save_checkpoint(self) -> CheckpointResponse:
        """POST /checkpoints."""
        return self.send(routes.save_checkpoint())

    def checkpoints(self) -> list[CheckpointResponse]:
        """GET /checkpoints, newest first."""
        return self.send(routes.checkpoints())

    def restore_checkpoint(self, checkpoint_id: str) -> VersionResponse:
        """POST /checkpoints/{id}/restore."""
        return self.send(routes.restore_checkpoint(checkpoint_id))

    def export_weights(self) -> bytes:
        """GET /params/export: the weights as safetensors bytes."""
        return self.send(routes.export_weights())

    def import_weights(self, data: bytes) -> VersionResponse:
        """PUT /params/import: replace the weights by a safetensors file."""
        return self.send(routes.import_weights(data))

    def health(self) -> HealthResponse:
        """GET /healthz."""
        return self.send(routes.health())

    def ready(self) -> HealthResponse:
        """GET /readyz; a service that is not ready raises `LenetHTTPError` 503."""
        return self.send(routes.ready())

    def metrics(self) -> str:
        """GET /metrics: Prometheus text."""
        return self.send(routes.metrics())


class AsyncLenetClient:
    """lenet-serve over HTTP, for asyncio. Use as an async context manager, or `aclose()`."""

    def __init__(
        self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(token), timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send one request and read its answer; errors become `LenetError`s."""
        try:
            response = await self._http.request(call.method, call.path, **call.request_kwargs())
        except httpx.HTTPError as error:
            raise _transport_error(self.url, call, error) from error
        return _answer(call, response)

    async def predict(
        self,
        images: Images,
        *,
        binary: bool = False,
        version: int | None = None,
        min_version: int | None = None,
    ) -> PredictResponse:
        """POST /predict: logits, argmax and softmax per image; `binary` sends base64 float32;
        `version` pins the weights, `min_version` waits for them (read-your-writes)."""
        return await self.send(routes.predict(images, binary, version, min_version))

    async def versions(self) -> VersionsResponse:
        """GET /versions: the current version and the resident ones, newest first."""
        return await self.send(routes.versions())

    async def predict_image(
        self,
        files: Sequence[ImageFile],
        *,
        invert: bool = False,
        version: int | None = None,
        min_version: int | None = None,
    ) -> PredictResponse:
        """POST /predict/image: PNG or JPEG files, as paths or (filename, bytes)."""
        return await self.send(routes.predict_image(files, invert, version, min_version))

    async def train_step(
        self,
        images: Images,
        targets: Targets,
        *,
        loss: LossName | None = None,
        lr: float | None = None,
        binary: bool = False,
    ) -> TrainStepResponse:
        """POST /train-step: one optimizer step; `lr` for this step only."""
        return await self.send(routes.train_step(images, targets, loss, lr, binary))

    async def loss(
        self,
        images: Images,
        targets: Targets,
        *,
        loss: LossName | None = None,
        lr: float | None = None,
        backward: bool = False,
        graph: bool = False,
        binary: bool = False,
        zero_grad: bool = True,
    ) -> LossResponse:
        """POST /loss: the loss without an update; gradients kept with `backward` (added to
        those there when `zero_grad` is false)."""
        return await self.send(
            routes.loss(images, targets, loss, lr, backward, graph, binary, zero_grad)
        )

    async def zero_grad(self) -> VersionResponse:
        """POST /zero-grad: every gradient becomes None, as `net.zero_grad()`."""
        return await self.send(routes.zero_grad())

    async def backward(
        self,
        images: Images,
        grad_outputs: GradOutputs,
        *,
        zero_grad: bool = True,
        binary: bool = False,
    ) -> BackwardResponse:
        """POST /backward: `net(images).backward(grad_outputs)`; the gradients stay."""
        return await self.send(routes.backward(images, grad_outputs, zero_grad, binary))

    async def step(self, *, lr: float | None = None) -> StepResponse:
        """POST /step: `optimizer.step()` on the gradients there; `lr` for this step only."""
        return await self.send(routes.step(lr))

    async def explain(
        self,
        image: Images,
        *,
        target: int | None = None,
        binary: bool = False,
        version: int | None = None,
        min_version: int | None = None,
    ) -> ExplainResponse:
        """POST /explain: every layer's output and the saliency of `target` (default: the
        predicted class) for one image; changes nothing."""
        return await self.send(routes.explain(image, target, binary, version, min_version))

    async def params(
        self, names: Sequence[str] | None = None, *, values: bool = False, grads: bool = False
    ) -> ParamsResponse:
        """GET /params: statistics of the named parameters (default all), values on request."""
        return await self.send(routes.params(names, values, grads))

    async def model(self) -> ModelResponse:
        """GET /model: the network, its version and step."""
        return await self.send(routes.model())

    async def optimizer(self) -> OptimizerConfig:
        """GET /optimizer."""
        return await self.send(routes.optimizer())

    async def set_optimizer(self, config: Mapping[str, Any] | BaseModel) -> OptimizerConfig:
        """PUT /optimizer with a flat body such as `{"name": "adam", "lr": 1e-3}`."""
        return await self.send(routes.set_optimizer(config))

    async def optimizers(self) -> OptimizerCatalogue:
        """GET /optimizers: each optimizer's torch and `lenet train` defaults, the presets."""
        return await self.send(routes.optimizers())

    async def reset(self, seed: int | None = None) -> VersionResponse:
        """POST /reset: new initial weights (seeded when `seed` is given), fresh optimizer."""
        return await self.send(routes.reset(seed))

    async def save_checkpoint(self) -> CheckpointResponse:
        """POST /checkpoints."""
        return await self.send(routes.save_checkpoint())

    async def checkpoints(self) -> list[CheckpointResponse]:
        """GET /checkpoints, newest first."""
        return await self.send(routes.checkpoints())

    async def restore_checkpoint(self, checkpoint_id: str) -> VersionResponse:
        """POST /checkpoints/{id}/restore."""
        return await self.send(routes.restore_checkpoint(checkpoint_id))

    async def export_weights(self) -> bytes:
        """GET /params/export: the weights as safetensors bytes."""
        return await self.send(routes.export_weights())

    async def import_weights(self, data: bytes) -> VersionResponse:
        """PUT /params/import: replace the weights by a safetensors file."""
        return await self.send(routes.import_weights(data))

    async def health(self) -> HealthResponse:
        """GET /healthz."""
        return await self.send(routes.health())

    async def ready(self) -> HealthResponse:
        """GET /readyz; a service that is not ready raises `LenetHTTPError` 503."""
        return await self.send(routes.ready())

    async def metrics(self) -> str:
        """GET /metrics: Prometheus text."""
        return await self.send(routes.metrics())
