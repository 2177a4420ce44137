"""`lenet train`: train a running lenet-serve over HTTP, as any client could.

The optimizer is set with PUT /optimizer, every update is a POST /train-step, and accuracy is
measured with POST /predict; nothing here imports torch or touches the weights directly. Batches
travel in the base64 `tensor` form: no number formatting on this side, no parsing on the other.
"""

import base64
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import httpx
import numpy as np
import orjson
from tqdm import tqdm

from app.datasets import Dataset, random_shift

# POST /predict answers at most this many images per request here: well inside the server's
# default LENET_MAX_BATCH_SIZE (1024) and one forward pass of its batcher (256 by default).
EVAL_BATCH_SIZE = 256

# Defaults measured on scikit-learn's digits (see the README): SGD with momentum, as in the
# PyTorch tutorial's optimizer, reaches >= 97% held-out accuracy in well under a minute.
DEFAULT_LR = {"sgd": 0.03, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3}
DEFAULT_MOMENTUM = {"sgd": 0.9, "rmsprop": 0.0}


class ServiceError(Exception):
    """The service could not be reached or refused a request; the message says what to do."""


@dataclass(frozen=True)
class TrainConfig:
    """What `lenet train` was asked to do."""

    epochs: int
    batch_size: int
    optimizer: dict[str, Any]  # the flat body of PUT /optimizer
    seed: int
    schedule: Literal["cosine", "constant"] = "cosine"
    augment: int = 0  # largest random shift of a training image, in its pixels


@dataclass(frozen=True)
class TrainResult:
    """How a run ended: steps taken, the server's counters after them, held-out accuracy."""

    steps: int
    first_step: int
    last_step: int
    version: int
    accuracy: float
    correct: int
    total: int
    seconds: float


def optimizer_body(name: str, lr: float | None, momentum: float | None) -> dict[str, Any]:
    """The PUT /optimizer body for `name`; unset values take this command's defaults."""
    body: dict[str, Any] = {"name": name, "lr": DEFAULT_LR[name] if lr is None else lr}
    if momentum is None:
        momentum = DEFAULT_MOMENTUM.get(name)
    elif name not in DEFAULT_MOMENTUM:
        raise ValueError(f"--momentum does not apply to {name}; it has betas instead")
    if momentum is not None:
        body["momentum"] = momentum
    return body


def scheduled_lr(base: float, step: int, total: int, warmup: int) -> float:
    """The learning rate of step `step` (0-based) of `total`: a linear warm-up over `warmup`
    steps, then a cosine decay towards 0 that never reaches it (the server refuses lr = 0)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup + 1) / (total - warmup + 1)  # in (0, 1): never lr = 0
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def tensor_field(images: np.ndarray) -> dict[str, Any]:
    """(N, H, W) float images -> the request's `tensor` form: shape [N, 1, H, W], base64 <f4."""
    batch = np.ascontiguousarray(images, dtype="<f4")[:, None]
    return {
        "shape": list(batch.shape),
        "dtype": "float32",
        "data": base64.b64encode(batch.tobytes()).decode("ascii"),
    }


def _describe_detail(detail: Any) -> str:
    # FastAPI's validation errors are a list of {"loc", "msg"}; ours are one string.
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


class ServiceClient:
    """The few lenet-serve endpoints training needs, with errors turned into ServiceError."""

    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> "ServiceClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        content = None if body is None else orjson.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        try:
            response = self._http.request(method, path, content=content, headers=headers)
        except httpx.ConnectError as error:
            raise ServiceError(
                f"cannot connect to {self.url} ({error}); is `lenet serve` running there? "
                "(--url sets the address)"
            ) from error
        except httpx.TimeoutException as error:
            raise ServiceError(f"{method} {self.url}{path} timed out ({error})") from error
        except httpx.HTTPError as error:
            raise ServiceError(f"{method} {self.url}{path} failed: {error}") from error
        if response.status_code == 401:
            hint = (
                "the token was refused; check --token / LENET_API_TOKEN"
                if self.token
                else "the server requires a token: pass --token or set LENET_API_TOKEN"
            )
            raise ServiceError(f"{method} {path}: 401 Unauthorized: {hint}")
        if response.status_code >= 400:
            try:
                detail = _describe_detail(response.json().get("detail", response.text))
            except (ValueError, AttributeError):
                detail = response.text.strip() or response.reason_phrase
            raise ServiceError(f"{method} {path}: {response.status_code} {detail}")
        return response.json()

    def model(self) -> dict[str, Any]:
        """GET /model: the network, its version and step."""
        result: dict[str, Any] = self._request("GET", "/model")
        return result

    def set_optimizer(self, body: dict[str, Any]) -> dict[str, Any]:
        """PUT /optimizer with a flat body; answers the optimizer now in use."""
        result: dict[str, Any] = self._request("PUT", "/optimizer", body)
        return result

    def train_step(
        self, images: np.ndarray, labels: np.ndarray, lr: float | None = None
    ) -> dict[str, Any]:
        """POST /train-step on one batch of class-indexed images; `lr` for this step only."""
        body: dict[str, Any] = {"tensor": tensor_field(images), "targets": labels.tolist()}
        if lr is not None:
            body["lr"] = lr
        result: dict[str, Any] = self._request("POST", "/train-step", body)
        return result

    def predict(self, images: np.ndarray) -> np.ndarray:
        """POST /predict: the predicted class of each image."""
        result = self._request("POST", "/predict", {"tensor": tensor_field(images)})
        return np.asarray(result["predictions"], dtype=np.int64)


def evaluate(client: ServiceClient, images: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(correct, total) of the served model on `images`, in POST /predict batches."""
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        predictions = client.predict(images[start : start + EVAL_BATCH_SIZE])
        correct += int((predictions == labels[start : start + EVAL_BATCH_SIZE]).sum())
    return correct, len(labels)


def train(
    client: ServiceClient, dataset: Dataset, config: TrainConfig, out: TextIO | None = None
) -> TrainResult:
    """Set the optimizer, run `epochs` shuffled passes of /train-step, evaluate after each;
    the report goes to `out` (standard output by default), the progress bar to stderr."""
    out = sys.stdout if out is None else out
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError("epochs and batch size must be at least 1")
    optimizer = client.set_optimizer(config.optimizer)
    first_step = int(client.model()["step"])
    steps_per_epoch = math.ceil(len(dataset.train_labels) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    base_lr = float(optimizer["lr"])
    # A warm-up of about an epoch keeps momentum from throwing fresh weights into dead ReLUs
    # (measured: without it, some initial weights end at 10% accuracy).
    warmup = min(steps_per_epoch, total_steps // 4)
    tqdm.write(
        f"{dataset.describe()}\noptimizer {orjson.dumps(optimizer).decode()}, "
        f"{config.schedule} schedule, shifts up to {config.augment} px: {config.epochs} "
        f"epoch{'s' if config.epochs > 1 else ''} x {steps_per_epoch} steps of "
        f"{config.batch_size}, from server step {first_step}",
        file=out,
    )
    rng = np.random.default_rng(config.seed)
    started = time.monotonic()
    steps = 0
    correct, total = 0, len(dataset.eval_labels)
    last: dict[str, Any] = {}
    with tqdm(total=total_steps, unit="step", desc="training", dynamic_ncols=True) as bar:
        for epoch in range(1, config.epochs + 1):
            order = rng.permutation(len(dataset.train_labels))
            loss_sum = 0.0
            seen = hits = 0
            for start in range(0, len(order), config.batch_size):
                batch = order[start : start + config.batch_size]
                images, labels = dataset.train_images[batch], dataset.train_labels[batch]
                images = random_shift(images, config.augment, rng)
                # Running accuracy comes from the same weights the step's loss does: those
                # before the update, through POST /predict, as any client would see them.
                hits += int((client.predict(images) == labels).sum())
                lr = None
                if config.schedule == "cosine":
                    lr = scheduled_lr(base_lr, steps, total_steps, warmup)
                last = client.train_step(images, labels, lr)
                steps += 1
                seen += len(batch)
                loss_sum += float(last["loss"]) * len(batch)
                bar.set_postfix_str(
                    f"epoch={epoch} loss={loss_sum / seen:.4f} acc={hits / seen:.4f}",
                    refresh=False,
                )
                bar.update()
            correct, total = evaluate(client, dataset.eval_images, dataset.eval_labels)
            tqdm.write(
                f"epoch {epoch}/{config.epochs}: train loss {loss_sum / seen:.4f}, "
                f"train accuracy {hits / seen:.4f}, held-out accuracy {correct / total:.4f}",
                file=out,
            )
    seconds = time.monotonic() - started
    assert last, "at least one epoch of at least one step"
    last_step, version = int(last["step"]), int(last["version"])
    result = TrainResult(
        steps, first_step, last_step, version, correct / total, correct, total, seconds
    )
    tqdm.write(
        f"held-out accuracy: {result.accuracy:.4f} ({correct}/{total}) after {steps} steps in "
        f"{seconds:.1f} s (server step {last_step}, version {version})",
        file=out,
    )
    return result
