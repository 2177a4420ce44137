"""The contract's "Precise semantics": versions, JSON types, targets, lr bound, NaN guard, limits.

In-process (`TestClient(create_app(settings))`, lifespan included): every rule here is about what
the app answers and what it leaves changed, not about the network.
"""

import base64
import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from safetensors.numpy import load as load_safetensors
from safetensors.torch import save as save_safetensors

from app.settings import MiB, Settings
from tests.conftest import image_batch, local_net

ClientFactory = Callable[..., TestClient]


def weights(client: TestClient) -> dict[str, np.ndarray]:
    """The served weights, read from GET /params/export (exact float32 bytes)."""
    response = client.get("/params/export")
    assert response.status_code == 200
    return load_safetensors(response.content)


def same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Bit-for-bit equality of two weight sets."""
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def version_step(client: TestClient) -> tuple[int, int]:
    """The served (version, step)."""
    body = client.get("/model").json()
    return body["version"], body["step"]


def grads(client: TestClient) -> list[Any]:
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


def train(client: TestClient, **extra: Any) -> dict[str, Any]:
    """One successful training step; its answer."""
    response = client.post("/train-step", json=step_body(**extra))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# ----------------------------------------------------------------------------- versions


def test_each_step_adds_exactly_one_to_version_and_step(client: TestClient) -> None:
    assert version_step(client) == (0, 0)
    for expected in (1, 2, 3):
        body = train(client, seed=expected)
        assert (body["version"], body["step"]) == (expected, expected)
    assert version_step(client) == (3, 3)
    assert (
        client.post("/predict", json={"inputs": image_batch(1)[0, 0].tolist()}).json()["version"]
        == 3
    )


def test_loss_optimizer_and_saves_keep_the_version(client: TestClient) -> None:
    train(client)
    before = weights(client)
    loss = client.post("/loss", json=step_body(backward=True, graph=True))
    assert loss.status_code == 200 and (loss.json()["version"], loss.json()["step"]) == (1, 1)
    assert client.put("/optimizer", json={"name": "adam", "lr": 0.001}).status_code == 200
    saved = client.post("/checkpoints")
    assert saved.status_code == 201 and (saved.json()["version"], saved.json()["step"]) == (1, 1)
    assert version_step(client) == (1, 1)
    assert same_weights(weights(client), before)


def test_reset_keeps_optimizer_config_and_starts_its_state_fresh(
    make_client: ClientFactory,
) -> None:
    momentum = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    used = make_client()
    assert used.put("/optimizer", json=momentum).status_code == 200
    train(used, seed=1)
    train(used, seed=2)
    reset = used.post("/reset", json={"seed": 0})
    assert reset.status_code == 200 and reset.json() == {"version": 3, "step": 0}
    assert used.get("/optimizer").json()["momentum"] == 0.9
    fresh = make_client()
    assert fresh.put("/optimizer", json=momentum).status_code == 200
    assert same_weights(weights(used), weights(fresh))
    # With a stale momentum buffer the next step would differ from a fresh optimizer's.
    train(used, seed=3)
    train(fresh, seed=3)
    assert same_weights(weights(used), weights(fresh))
    # An empty body is a reset without a seed: still a new version.
    assert used.post("/reset").json()["version"] == 5


def test_restore_is_a_new_version_with_the_checkpoint_step_and_optimizer_state(
    client: TestClient,
) -> None:
    assert client.put("/optimizer", json={"name": "sgd", "lr": 0.05, "momentum": 0.9}).is_success
    train(client, seed=1)
    train(client, seed=2)
    checkpoint = client.post("/checkpoints").json()
    assert (checkpoint["version"], checkpoint["step"]) == (2, 2)
    after_third = train(client, seed=3)
    expected = weights(client)
    train(client, seed=4)
    restored = client.post(f"/checkpoints/{checkpoint['id']}/restore")
    assert restored.status_code == 200
    assert restored.json() == {"version": 5, "step": 2}
    # The momentum buffer came back too: the same third step lands on the same weights.
    again = train(client, seed=3)
    assert again["step"] == after_third["step"] == 3 and again["version"] == 6
    assert same_weights(weights(client), expected)
    assert client.post("/checkpoints/no-such-id/restore").status_code == 404


def test_import_is_a_new_version_at_step_zero_with_a_fresh_optimizer(
    make_client: ClientFactory,
) -> None:
    momentum = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    imported = {k: torch.from_numpy(v) for k, v in weights(make_client(seed=7)).items()}
    payload = save_safetensors(imported)
    used = make_client()
    assert used.put("/optimizer", json=momentum).status_code == 200
    train(used, seed=1)
    train(used, seed=2)
    answer = used.put(
        "/params/import", content=payload, headers={"content-type": "application/octet-stream"}
    )
    assert answer.status_code == 200 and answer.json() == {"version": 3, "step": 0}
    fresh = make_client()
    assert fresh.put("/optimizer", json=momentum).status_code == 200
    assert fresh.put("/params/import", content=payload).status_code == 200
    train(used, seed=3)
    train(fresh, seed=3)
    assert same_weights(weights(used), weights(fresh))


def test_restart_continues_from_the_checkpoint_which_wins_over_the_seed(
    make_client: ClientFactory,
) -> None:
    first = make_client(seed=0)
    for seed in (1, 2, 3):
        train(first, seed=seed)
    assert first.post("/checkpoints").status_code == 201
    trained = weights(first)
    first.__exit__(None, None, None)
    second = make_client(seed=5)
    assert version_step(second) == (3, 3)
    assert same_weights(weights(second), trained)
    assert (train(second)["version"], version_step(second)) == (4, (4, 4))


def test_shutdown_without_a_step_writes_no_checkpoint(make_client: ClientFactory) -> None:
    idle = make_client(autosave_on_shutdown=True)
    idle.__exit__(None, None, None)
    # Nothing was trained, so nothing may pin the seed's weights for the next start.
    reseeded = make_client(seed=5, autosave_on_shutdown=True)
    assert reseeded.get("/checkpoints").json() == {"checkpoints": []}
    expected = {n: p.detach().numpy() for n, p in local_net(5).named_parameters()}
    assert same_weights(weights(reseeded), expected)
    train(reseeded)
    reseeded.__exit__(None, None, None)
    after = make_client()
    assert version_step(after) == (1, 1)


# ----------------------------------------------------------------------------- JSON types

ONE_IMAGE = image_batch(1)[0, 0].tolist()


def _image_with(value: Any) -> list[list[Any]]:
    image: list[list[Any]] = [row[:] for row in ONE_IMAGE]
    image[3][4] = value
    return image


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"inputs": _image_with("0.5")}, 422),
        ({"inputs": _image_with(True)}, 422),
        ({"inputs": _image_with(None)}, 422),
        ({"inputs": _image_with([0.5])}, 422),
        ({"inputs": _image_with({"v": 1})}, 422),
        ({"inputs": _image_with(1e39)}, 422),
        ({"inputs": _image_with(-1e39)}, 422),
        ({"inputs": "[[0.0]]"}, 422),
        ({"tensor": {**tensor_field([32, 32]), "dtype": "float64"}}, 422),
        ({"tensor": tensor_field([1, 32, 32], fill=math.inf)}, 422),
        ({"tensor": tensor_field([1, 32, 32], fill=math.nan)}, 422),
    ],
)
def test_pixels_are_finite_json_numbers_only(
    client: TestClient, body: dict[str, Any], status: int
) -> None:
    for route, extra in (("/predict", {}), ("/train-step", {"targets": [1]})):
        response = client.post(route, json={**body, **extra})
        assert response.status_code == status, (route, response.text)
        assert isinstance(response.json()["detail"], str)
    assert version_step(client) == (0, 0)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e309", b"nan"])
def test_non_finite_literals_in_the_text_are_refused(client: TestClient, literal: bytes) -> None:
    body = b'{"inputs": [[' + literal + b", 0.0], [0.0, 0.0]]}"
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "detail" in response.json()


def test_a_finite_pixel_at_the_float32_edge_is_accepted(client: TestClient) -> None:
    response = client.post("/predict", json={"inputs": _image_with(3.4e38)})
    assert response.status_code == 200


def test_an_input_that_overflows_the_network_is_refused_not_answered_with_nulls(
    client: TestClient,
) -> None:
    # Finite float32 pixels whose logits overflow: the answer must never hold NaN (null) scores.
    signs = np.random.default_rng(1).standard_normal((32, 32)) > 0
    image = np.where(signs, 3.4e38, -3.4e38).astype(np.float32).tolist()
    response = client.post("/predict", json={"inputs": image})
    assert response.status_code == 422, response.text
    assert "finite" in response.json()["detail"]
    assert client.post("/predict", json={"inputs": ONE_IMAGE}).status_code == 200


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "json"],
)
def test_json_routes_need_the_json_content_type(
    client: TestClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    bodies = {
        "/predict": {"inputs": ONE_IMAGE},
        "/train-step": {"inputs": ONE_IMAGE, "targets": [1]},
        "/loss": {"inputs": ONE_IMAGE, "targets": [1]},
        "/reset": {"seed": 1},
    }
    for route, body in bodies.items():
        response = client.post(route, content=orjson.dumps(body), headers=headers)
        assert response.status_code == 415, (route, response.text)
    response = client.put("/optimizer", content=b'{"name": "sgd"}', headers=headers)
    assert response.status_code == 415
    assert version_step(client) == (0, 0)


def test_json_with_a_charset_parameter_is_json(client: TestClient) -> None:
    response = client.post(
        "/predict",
        content=orjson.dumps({"inputs": ONE_IMAGE}),
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", "0.1"), ("lr", True), ("backward", 1), ("backward", "true"), ("graph", None)],
)
def test_scalars_are_not_coerced(client: TestClient, field: str, value: Any) -> None:
    route = "/train-step" if field == "lr" else "/loss"
    response = client.post(route, json={"inputs": ONE_IMAGE, "targets": [1], field: value})
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert version_step(client) == (0, 0)


@pytest.mark.parametrize(
    "body",
    [{"name": "sgd", "lr": "0.1"}, {"name": "sgd", "nesterov": 1}, {"name": "adam", "lr": True}],
)
def test_optimizer_fields_are_not_coerced(client: TestClient, body: dict[str, Any]) -> None:
    before = client.get("/optimizer").json()
    assert client.put("/optimizer", json=body).status_code == 422
    assert client.get("/optimizer").json() == before


# ----------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("n", "targets"),
    [
        (2, [3, 1.0]),
        (1, [3.0]),
        (2, ["3", "1"]),
        (2, [True, False]),
        (2, [-1, 0]),
        (2, [10, 0]),
        (2, [3.5, 1]),
        (2, [1, 2, 3]),
        (2, [[1, 2]]),
        (2, [[[0.1] * 10] * 2]),
        (1, [0.1] * 9),
        (3, [[0.1] * 10] * 2),
        (2, []),
        (2, None),
        (2, 3),
    ],
)
def test_bad_targets_are_422(client: TestClient, n: int, targets: Any) -> None:
    body = {"inputs": image_batch(n).tolist(), "targets": targets}
    for route in ("/train-step", "/loss"):
        response = client.post(route, json=body)
        assert response.status_code == 422, (route, targets, response.text)
    assert version_step(client) == (0, 0)


def test_mse_takes_target_vectors_only(client: TestClient) -> None:
    body = {"inputs": image_batch(2).tolist(), "targets": [1, 2], "loss": "mse"}
    response = client.post("/train-step", json=body)
    assert response.status_code == 422 and "vector" in response.json()["detail"]
    bad_name = client.post("/train-step", json={**body, "loss": "hinge"})
    assert bad_name.status_code == 422


def _local_loss(images: np.ndarray, targets: Any, loss: str) -> float:
    net = local_net()
    with torch.no_grad():
        outputs = net(torch.from_numpy(images))
        target = torch.tensor(targets)
        if loss == "mse":
            return float(F.mse_loss(outputs, target.reshape(outputs.shape).float()))
        if target.dtype.is_floating_point:
            target = target.reshape(outputs.shape).float()
        return float(F.cross_entropy(outputs, target))


@pytest.mark.parametrize(
    ("n", "targets", "loss"),
    [
        (3, [3, 0, 9], None),  # class indices -> cross_entropy
        (3, [3, 0, 9], "cross_entropy"),
        (2, [[0.1] * 10, [0.0] * 9 + [1.0]], None),  # vectors -> mse
        (2, [[0.1] * 10, [0.0] * 9 + [1.0]], "cross_entropy"),  # probabilities
        (1, [float(v) for v in range(1, 11)], None),  # the tutorial's arange(1, 11), N = 1
        (1, list(range(1, 11)), "mse"),  # integers are fine as vector entries
        (10, list(range(10)), None),  # N = 10: ten integers are indices, not one vector
    ],
)
def test_targets_mean_what_the_contract_says(
    client: TestClient, n: int, targets: Any, loss: str | None
) -> None:
    images = image_batch(n)
    body: dict[str, Any] = {"inputs": images.tolist(), "targets": targets}
    if loss is not None:
        body["loss"] = loss
    response = client.post("/loss", json=body)
    assert response.status_code == 200, response.text
    floats = any(isinstance(t, float) or isinstance(t, list) for t in targets)
    resolved = loss or ("mse" if floats or (n == 1 and len(targets) == 10) else "cross_entropy")
    expected = _local_loss(images, targets, resolved)
    assert response.json()["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------- lr and guard


@pytest.mark.parametrize("lr", [0, 0.0, -1, -1e-9, 10.000001, 1e30, 1e308])
def test_lr_outside_the_bound_is_422(client: TestClient, lr: float) -> None:
    for route in ("/train-step", "/loss"):
        response = client.post(route, json=step_body(lr=lr))
        assert response.status_code == 422, (route, response.text)
        assert "LENET_MAX_LR" in response.json()["detail"]
    assert client.put("/optimizer", json={"name": "sgd", "lr": lr}).status_code == 422
    assert client.get("/optimizer").json()["lr"] == 0.01
    assert version_step(client) == (0, 0)


def test_lr_at_the_bound_is_accepted_and_the_bound_is_a_setting(
    make_client: ClientFactory,
) -> None:
    default = make_client()
    assert default.post("/train-step", json=step_body(lr=10)).status_code == 200
    assert default.post("/train-step", json=step_body(lr=1e-12)).status_code == 200
    low = make_client(max_lr=0.5)
    refused = low.post("/train-step", json=step_body(lr=1))
    assert refused.status_code == 422 and "0.5" in refused.json()["detail"]
    assert low.post("/train-step", json=step_body(lr=0.5)).status_code == 200
    assert low.put("/optimizer", json={"name": "adam", "lr": 0.6}).status_code == 422


def test_a_step_with_lr_keeps_the_configured_lr(client: TestClient) -> None:
    answer = train(client, lr=0.5)
    assert answer["optimizer"]["lr"] == 0.5
    assert client.get("/optimizer").json()["lr"] == 0.01


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # Finite float32 pixels, so well-formed, but the loss overflows to NaN.
        (
            {
                "inputs": np.where(image_batch(4) > 0, 3.4e38, -3.4e38).astype(np.float32).tolist(),
                "targets": [1, 2, 3, 4],
            },
            "loss",
        ),
        # A finite loss and gradients, but lr * gradient overflows the weights.
        (
            {"inputs": image_batch(4).tolist(), "targets": [[100.0] * 10] * 4, "lr": 1e38},
            "weights",
        ),
    ],
)
def test_a_non_finite_step_is_refused_and_changes_nothing(
    make_client: ClientFactory, body: dict[str, Any], reason: str
) -> None:
    momentum = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    poisoned, reference = make_client(max_lr=1e38), make_client(max_lr=1e38)
    for c in (poisoned, reference):
        assert c.put("/optimizer", json=momentum).status_code == 200
        train(c, seed=1)  # gives the optimizer a momentum buffer to protect
    before = (weights(poisoned), version_step(poisoned), grads(poisoned))
    response = poisoned.post("/train-step", json=body)
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]
    assert same_weights(weights(poisoned), before[0])
    assert version_step(poisoned) == before[1] == (1, 1)
    assert grads(poisoned) == before[2]
    assert poisoned.get("/readyz").status_code == 200
    # The optimizer state is as it was: the next step matches a server that never saw it.
    train(poisoned, seed=2)
    train(reference, seed=2)
    assert same_weights(weights(poisoned), weights(reference))
    assert version_step(poisoned) == (2, 2)


# ----------------------------------------------------------------------------- limits


def test_limit_defaults_are_the_contracts() -> None:
    settings = Settings()
    assert (settings.max_batch_size, settings.max_image_side) == (1024, 256)
    assert settings.max_body_bytes == 64 * MiB


@pytest.mark.parametrize(
    ("shape", "names"),
    [
        ([1025, 1, 1], ("1024", "LENET_MAX_BATCH_SIZE")),
        ([1025, 1, 1, 1], ("1024", "LENET_MAX_BATCH_SIZE")),
        ([1, 257, 1], ("256", "LENET_MAX_IMAGE_SIDE")),
        ([1, 257], ("256", "LENET_MAX_IMAGE_SIDE")),
    ],
)
def test_default_batch_and_side_limits_are_422_naming_the_limit(
    client: TestClient, shape: list[int], names: tuple[str, ...]
) -> None:
    for field, value in (("tensor", tensor_field(shape)), ("inputs", np.zeros(shape).tolist())):
        response = client.post("/predict", json={field: value})
        assert response.status_code == 422, (field, response.text)
        assert all(name in response.json()["detail"] for name in names), response.text
    at_limit = [min(d, 1024 if i == 0 and len(shape) > 2 else 256) for i, d in enumerate(shape)]
    assert client.post("/predict", json={"tensor": tensor_field(at_limit)}).status_code == 200


def _targets(route: str, n: int) -> dict[str, Any]:
    return {} if route == "/predict" else {"targets": list(range(n))}


def test_configured_limits_apply_to_every_route(make_client: ClientFactory) -> None:
    small = make_client(max_batch_size=2, max_image_side=40, max_body_bytes=4096)
    for route in ("/predict", "/train-step", "/loss"):
        answer = small.post(
            route, json={"inputs": np.zeros((3, 8, 8)).tolist(), **_targets(route, 3)}
        )
        assert answer.status_code == 422 and "2 (LENET_MAX_BATCH_SIZE)" in answer.json()["detail"]
        wide = small.post(route, json={"tensor": tensor_field([1, 41, 8]), **_targets(route, 1)})
        assert wide.status_code == 422 and "40 (LENET_MAX_IMAGE_SIDE)" in wide.json()["detail"]
        big = small.post(
            route, json={"inputs": np.zeros((2, 40, 40)).tolist(), **_targets(route, 2)}
        )
        assert big.status_code == 413 and "4096" in big.json()["detail"], big.text
    upload = io.BytesIO(b"\0" * 5000)
    assert small.put("/params/import", content=upload.getvalue()).status_code == 413
    assert version_step(small) == (0, 0)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/optimizer", "GET, PUT"),
        ("DELETE", "/checkpoints", "GET, POST"),
        ("GET", "/checkpoints/some-id/restore", "POST"),
        ("GET", "/train-step", "POST"),
    ],
)
def test_a_wrong_method_is_405_listing_every_method_of_the_path(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405 and "detail" in response.json()
    assert response.headers["allow"] == allow
