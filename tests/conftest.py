"""Shared fixtures: settings, an in-process client (lifespan runs), and a real server."""

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from safetensors.numpy import load as load_safetensors

from app.main import create_app
from app.settings import Settings
from tests import server as test_server
from tests.server import LiveServer, start_test_server

# The device the suite runs on: CPU unless LENET_DEVICE says otherwise (e.g. cuda on a GPU box).
TEST_DEVICE = os.environ.get("LENET_DEVICE", "cpu")

# How close served numbers must be to the same torch computation done locally on the CPU. On the
# CPU: float32 rounding (the same kernels, the same thread count). On a GPU the kernels sum in
# another order (TF32 stays off), and Adam and RMSprop, which divide by small second moments,
# carry that through their steps: 1e-4, the contract's bound for CUDA.
CPU_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
GPU_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
TOLERANCE = CPU_TOLERANCE if TEST_DEVICE == "cpu" else GPU_TOLERANCE
SEED = 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Remember the test being set up (its fixtures included) for `tests.server`'s check."""
    test_server.current_test[:] = [item]


# torch's default intra-op thread count, read before anything changes it.
DEFAULT_TORCH_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def same_torch_threads_as_the_server() -> None:
    """Local reference computations use the server's intra-op thread count, so reductions sum
    in the same order and Adam/RMSprop (which amplify tiny gradient differences) compare exactly."""
    torch.set_num_threads(Settings(_env_file=None).torch_threads or DEFAULT_TORCH_THREADS)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test: seeded weights, a private checkpoint folder, overrides on top."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "device": TEST_DEVICE,
            "seed": SEED,
            "checkpoint_dir": tmp_path / "checkpoints",
            "autosave_on_shutdown": False,
            # One process builds hundreds of apps here: frozen objects are never collected.
            "gc_freeze": False,
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """Build in-process clients whose app runs its lifespan; all closed after the test."""
    clients: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """An in-process client on a seeded model."""
    return make_client()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A real uvicorn server on 127.0.0.1, seeded, with its own checkpoint folder."""
    server = start_test_server(tmp_path, seed=SEED, device=TEST_DEVICE)
    yield server
    server.stop()


def image_batch(n: int, seed: int = 1, side: int = 32) -> np.ndarray:
    """A reproducible batch (n, 1, side, side) of float32 pixels."""
    return np.random.default_rng(seed).standard_normal((n, 1, side, side)).astype(np.float32)


def local_net(seed: int = SEED) -> torch.nn.Module:
    """The network a client rebuilds for LENET_SEED=seed: manual_seed, then Net() on the CPU."""
    from models.lenet import Net

    torch.manual_seed(seed)
    return Net()


def exported_weights(client: Any) -> dict[str, torch.Tensor]:
    """The served weights, bit for bit, read through GET /params/export (safetensors)."""
    from safetensors.torch import load

    response = client.get("/params/export")
    assert response.status_code == 200, response.text
    return load(response.content)


def snapshot(client: Any) -> tuple[bytes, int, int]:
    """Weights' bytes, version and step: what a rejected request must leave unchanged."""
    # The tensors' bytes, not the file's: safetensors orders its metadata header arbitrarily.
    tensors = exported_weights(client)
    weights = b"".join(tensors[name].numpy().tobytes() for name in sorted(tensors))
    model = client.get("/model").json()
    return weights, model["version"], model["step"]


def training_state(client: Any) -> tuple[Any, ...]:
    """Everything a mutating request could change: weights' tensors, version, step, gradients,
    optimizer and the checkpoint list (tensors, not file bytes: see `snapshot`)."""
    params = client.get("/params", params={"grads": "true"}).json()
    tensors = exported_weights(client)
    return (
        {name: tensor.numpy().tobytes() for name, tensor in tensors.items()},
        params["version"],
        params["step"],
        [p["grad"] for p in params["parameters"]],
        client.get("/optimizer").json(),
        client.get("/checkpoints").json(),
    )


def served_weights(client: Any) -> dict[str, np.ndarray]:
    """The served weights, read from GET /params/export (exact float32 bytes)."""
    response = client.get("/params/export")
    assert response.status_code == 200
    return load_safetensors(response.content)


def same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Bit-for-bit equality of two weight sets."""
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def version_step(client: Any) -> tuple[int, int]:
    """The served (version, step)."""
    body = client.get("/model").json()
    return body["version"], body["step"]


def served_grads(client: Any) -> list[Any]:
    """The latest gradients as GET /params shows them."""
    body = client.get("/params", params={"grads": "true"}).json()
    return [p["grad"] for p in body["parameters"]]


def step_body(n: int = 4, seed: int = 1, **extra: Any) -> dict[str, Any]:
    """A /train-step body with `n` images and class-index targets."""
    return {"inputs": image_batch(n, seed).tolist(), "targets": list(range(n)), **extra}


def tensor_field(shape: list[int], fill: float = 0.0) -> dict[str, Any]:
    """The base64 `tensor` form of an array of `shape` filled with `fill`."""
    data = np.full(shape, fill, dtype="<f4").tobytes()
    return {"shape": shape, "dtype": "float32", "data": base64.b64encode(data).decode()}


def train(client: Any, **extra: Any) -> dict[str, Any]:
    """One successful training step; its answer."""
    response = client.post("/train-step", json=step_body(**extra))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def post_train_step(client: Any, images: np.ndarray, targets: Any, **extra: Any) -> Any:
    """POST /train-step with `images` as nested arrays; the raw response."""
    return client.post("/train-step", json={"inputs": images.tolist(), "targets": targets, **extra})


class RunsOnUnpickle:
    """A pickle payload that creates `marker` if anything ever unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def local_explanation(
    net: torch.nn.Module, image: torch.Tensor, target: int | None
) -> dict[str, Any]:
    """POST /explain computed locally with torch: the tutorial's forward layer by layer, and
    the gradient of the target's logit (default: the predicted class) with respect to x."""
    x = image.clone().requires_grad_(True)
    conv1 = F.relu(net.conv1(x))
    pool1 = F.max_pool2d(conv1, 2)
    conv2 = F.relu(net.conv2(pool1))
    pool2 = F.max_pool2d(conv2, 2)
    fc1 = F.relu(net.fc1(pool2.flatten(1)))
    fc2 = F.relu(net.fc2(fc1))
    fc3 = net.fc3(fc2)
    chosen = int(fc3.argmax()) if target is None else target
    (saliency,) = torch.autograd.grad(fc3[0, chosen], x)  # leaves the parameters' .grad alone
    layers = {"conv1": conv1, "pool1": pool1, "conv2": conv2, "pool2": pool2}
    layers.update(fc1=fc1, fc2=fc2, fc3=fc3)
    return {
        "target": chosen,
        "prediction": int(fc3.argmax()),
        "activations": {k: v.detach()[0].numpy() for k, v in layers.items()},
        "saliency": saliency[0, 0].numpy(),
        "outputs": fc3.detach()[0].numpy(),
    }
