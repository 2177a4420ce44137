"""app.routes.training: POST /train-step, POST /loss, GET/PUT /optimizer, POST /reset, in process.

What each answers and what it leaves changed: versions, targets and losses, the lr bound, the
non-finite guard, strict JSON types, and bad bodies refused with their status and words.
"""

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from models.lenet import Net
from tests.conftest import (
    TOLERANCE,
    exported_weights,
    image_batch,
    local_net,
    post_train_step,
    same_weights,
    served_grads,
    served_weights,
    snapshot,
    step_body,
    train,
    version_step,
)

ClientFactory = Callable[..., TestClient]


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
    before = served_weights(client)
    loss = client.post("/loss", json=step_body(backward=True, graph=True))
    assert loss.status_code == 200 and (loss.json()["version"], loss.json()["step"]) == (1, 1)
    assert client.put("/optimizer", json={"name": "adam", "lr": 0.001}).status_code == 200
    saved = client.post("/checkpoints")
    assert saved.status_code == 201 and (saved.json()["version"], saved.json()["step"]) == (1, 1)
    assert version_step(client) == (1, 1)
    assert same_weights(served_weights(client), before)


# ----------------------------------------------------------------------------- /loss


def test_loss_without_backward_changes_nothing(client: Any) -> None:
    images = image_batch(3)
    before = snapshot(client)
    body = client.post("/loss", json={"inputs": images.tolist(), "targets": [0, 1, 2]}).json()
    expected = F.cross_entropy(local_net()(torch.from_numpy(images)), torch.tensor([0, 1, 2]))
    assert body["loss"] == pytest.approx(expected.item(), rel=TOLERANCE["rtol"])
    assert body["graph"] is None
    assert snapshot(client) == before
    grads = client.get("/params", params={"grads": "true"}).json()["parameters"]
    assert all(p["grad"] is None for p in grads)


def test_loss_with_backward_keeps_gradients_not_weights(client: Any) -> None:
    images = image_batch(1)
    target = list(range(1, 11))
    before = snapshot(client)
    body = {"inputs": images.tolist(), "targets": target, "backward": True}
    answer = client.post("/loss", json=body)
    assert answer.status_code == 200, answer.text
    assert snapshot(client) == before
    net = local_net()
    F.mse_loss(net(torch.from_numpy(images)), torch.arange(1, 11.0).view(1, -1)).backward()
    served = client.get("/params", params={"grads": "true"}).json()["parameters"]
    for entry, (name, parameter) in zip(served, net.named_parameters(), strict=True):
        assert entry["name"] == name
        np.testing.assert_allclose(entry["grad"], parameter.grad.numpy(), atol=TOLERANCE["atol"])
        assert entry["grad_stats"]["norm"] == pytest.approx(parameter.grad.norm().item(), 1e-4)


def test_graph_is_the_whole_grad_fn_walk(client: Any) -> None:
    images = image_batch(1)
    body = {"inputs": images.tolist(), "targets": list(range(1, 11)), "graph": True}
    graph = client.post("/loss", json=body).json()["graph"]
    nodes = {node["id"]: node for node in graph["nodes"]}
    assert nodes[graph["root"]]["name"] == "MseLossBackward0"
    assert nodes[nodes[0]["next"][0]]["name"] == "AddmmBackward0"
    params = sorted(node["param"] for node in graph["nodes"] if node["name"] == "AccumulateGrad")
    assert params == sorted(name for name, _ in Net().named_parameters())
    # Every edge points at a node in the list, and every node is reachable from the root.
    reachable, frontier = {0}, [0]
    while frontier:
        for nxt in nodes[frontier.pop()]["next"]:
            assert nxt in nodes
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(nodes)


# ----------------------------------------------------------------------------- /reset


def test_reset_gives_new_seeded_weights_and_a_larger_version(client: Any) -> None:
    post_train_step(client, image_batch(2), [1, 2])
    answer = client.post("/reset", json={"seed": 9})
    assert answer.json() == {"version": 2, "step": 0}
    torch.manual_seed(9)
    expected = Net().state_dict()
    served = exported_weights(client)
    for name, value in expected.items():
        assert torch.equal(served[name], value), name
    grads = client.get("/params", params={"grads": "true"}).json()["parameters"]
    assert all(p["grad"] is None for p in grads)
    unseeded = client.post("/reset")
    assert unseeded.status_code == 200 and unseeded.json()["version"] == 3


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
    assert same_weights(served_weights(used), served_weights(fresh))
    # With a stale momentum buffer the next step would differ from a fresh optimizer's.
    train(used, seed=3)
    train(fresh, seed=3)
    assert same_weights(served_weights(used), served_weights(fresh))
    # An empty body is a reset without a seed: still a new version.
    assert used.post("/reset").json()["version"] == 5


# ----------------------------------------------------------------------------- JSON types


ONE_IMAGE = image_batch(1)[0, 0].tolist()


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
    assert response.json()["loss"] == pytest.approx(
        expected, rel=TOLERANCE["rtol"], abs=TOLERANCE["atol"]
    )


# ----------------------------------------------------------------------------- lr and guard


@pytest.mark.parametrize("lr", [0, 0.0, -1, -1e-9, 10.000001, 1e30, 1e308])
def test_lr_outside_the_bound_is_422(client: TestClient, lr: float) -> None:
    before = snapshot(client)
    for route in ("/train-step", "/loss"):
        response = client.post(route, json=step_body(lr=lr))
        assert response.status_code == 422, (route, response.text)
        assert "LENET_MAX_LR" in response.json()["detail"]
    assert client.put("/optimizer", json={"name": "sgd", "lr": lr}).status_code == 422
    assert client.get("/optimizer").json()["lr"] == 0.01
    assert version_step(client) == (0, 0)
    assert snapshot(client) == before


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
    before = (served_weights(poisoned), version_step(poisoned), served_grads(poisoned))
    response = poisoned.post("/train-step", json=body)
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]
    assert same_weights(served_weights(poisoned), before[0])
    assert version_step(poisoned) == before[1] == (1, 1)
    assert served_grads(poisoned) == before[2]
    assert poisoned.get("/readyz").status_code == 200
    # The optimizer state is as it was: the next step matches a server that never saw it.
    train(poisoned, seed=2)
    train(reference, seed=2)
    assert same_weights(served_weights(poisoned), served_weights(reference))
    assert version_step(poisoned) == (2, 2)


def test_non_finite_step_is_refused_whole(make_client: Any) -> None:
    """With the bound lifted, lr 1e38 makes weights overflow: the step is undone exactly,
    weights, gradients, momentum buffers and counters alike."""
    client = make_client(max_lr=1e38)
    client.put("/optimizer", json={"name": "sgd", "lr": 0.01, "momentum": 0.9})
    images = image_batch(4)
    assert (
        post_train_step(client, images, [1, 2, 3, 4]).status_code == 200
    )  # momentum has state now
    before = snapshot(client)
    grads_before = client.get("/params", params={"grads": "true"}).json()["parameters"]
    # lr 1e30 alone stays finite; larger inputs make gradients large enough to overflow.
    answer = post_train_step(client, images * 100, [1, 2, 3, 4], lr=1e38)
    assert answer.status_code == 422, answer.text
    assert "non-finite" in answer.json()["detail"]
    assert snapshot(client) == before
    assert client.get("/params", params={"grads": "true"}).json()["parameters"] == grads_before
    # The optimizer state is as before: the next good step equals SGD-momentum's second step.
    net = local_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(net(torch.from_numpy(images)), torch.tensor([1, 2, 3, 4])).backward()
        optimizer.step()
    assert post_train_step(client, images, [1, 2, 3, 4]).json()["step"] == 2
    served = exported_weights(client)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(served[name], value, **TOLERANCE, msg=name)


def test_lr_1e30_is_refused_by_the_guard_once_the_loss_overflows(make_client: Any) -> None:
    """lr 1e30 (allowed here) leaves huge but finite weights; the next step's loss is NaN, and
    that step is refused whole."""
    client = make_client(max_lr=1e38)
    images = image_batch(4)
    first = post_train_step(client, images, [1, 2, 3, 4], lr=1e30)
    assert first.status_code == 200, first.text
    before = snapshot(client)
    second = post_train_step(client, images, [1, 2, 3, 4], lr=1e30)
    assert second.status_code == 422, second.text
    assert "not finite" in second.json()["detail"]
    assert snapshot(client) == before
    assert client.get("/readyz").status_code == 200


def test_extreme_inputs_with_mse_are_refused(client: Any) -> None:
    before = snapshot(client)
    images = np.full((1, 1, 32, 32), 3e38, dtype=np.float32)
    answer = post_train_step(client, images, [float(v) for v in range(10)], loss="mse")
    assert answer.status_code == 422, answer.text
    assert snapshot(client) == before


# ----------------------------------------------------------------------------- bad bodies


BATCH2 = image_batch(2).tolist()


GOOD_TENSOR = {
    "shape": [1, 1, 32, 32],
    "dtype": "float32",
    "data": base64.b64encode(image_batch(1).tobytes()).decode(),
}


CASES: list[tuple[str, str, Any, int, str]] = [
    # (id, route, body, status, words the message must contain)
    ("label-10", "/train-step", {"inputs": BATCH2, "targets": [1, 10]}, 422, "0-9"),
    ("label-neg", "/train-step", {"inputs": BATCH2, "targets": [-1, 1]}, 422, "0-9"),
    ("label-float", "/train-step", {"inputs": BATCH2, "targets": [3.5, 1]}, 422, "integers"),
    ("label-count", "/train-step", {"inputs": BATCH2, "targets": [1, 2, 3]}, 422, "targets"),
    ("no-targets", "/train-step", {"inputs": BATCH2}, 422, "targets"),
    ("loss-name", "/train-step", {"inputs": BATCH2, "targets": [1, 2], "loss": "l1"}, 422, "loss"),
    (
        "mse-indices",
        "/train-step",
        {"inputs": BATCH2, "targets": [1, 2], "loss": "mse"},
        422,
        "mse",
    ),
    ("lr-zero", "/train-step", {"inputs": BATCH2, "targets": [1, 2], "lr": 0}, 422, "lr"),
    ("lr-negative", "/train-step", {"inputs": BATCH2, "targets": [1, 2], "lr": -1}, 422, "lr"),
    ("lr-string", "/train-step", {"inputs": BATCH2, "targets": [1, 2], "lr": "0.1"}, 422, "lr"),
    (
        "step-both",
        "/train-step",
        {"inputs": BATCH2, "tensor": GOOD_TENSOR, "targets": [1]},
        422,
        "both",
    ),
    ("loss-flag", "/loss", {"inputs": BATCH2, "targets": [1, 2], "backward": 1}, 422, "backward"),
]


@pytest.mark.parametrize(
    ("route", "body", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_bodies_are_refused_and_change_nothing(
    client: Any, route: str, body: Any, status: int, words: str
) -> None:
    before = snapshot(client)
    answer = client.post(route, json=body)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert words in str(detail), detail
    assert snapshot(client) == before


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"inputs": [[NaN]]}', "application/json", 400),
        (b'{"inputs": [[Infinity]]}', "application/json", 400),
        (b'{"inputs": [[-Infinity, 0.0], [0.0, 0.0]]}', "application/json", 400),
        (b'{"inputs": [[1e309, 0.0], [0.0, 0.0]]}', "application/json", 400),
        (b'{"inputs": [[nan, 0.0], [0.0, 0.0]]}', "application/json", 400),
        (b'{"inputs": ', "application/json", 400),
        (b"[1, 2]", "application/json", 422),
        (b'{"inputs": [[1.0]]}', "text/plain", 415),
        (b'{"inputs": [[1.0]], "targets": [1], "lr": 1e309}', "application/json", 400),
        (b'{"inputs": [[1.0]]}', "", 415),
    ],
    ids=[
        "nan",
        "infinity",
        "-infinity",
        "1e309",
        "lower-nan",
        "truncated",
        "not-object",
        "text-plain",
        "lr-1e309",
        "no-type",
    ],
)
def test_unreadable_bodies(client: Any, content: bytes, content_type: str, status: int) -> None:
    before = snapshot(client)
    headers = {"content-type": content_type} if content_type else {}
    for route in ("/predict", "/train-step"):
        answer = client.post(route, content=content, headers=headers)
        assert answer.status_code == status, answer.text
        assert "detail" in answer.json()
    assert snapshot(client) == before


# ----------------------------------------------------------------------------- methods


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


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e309"])
def test_non_finite_literals_are_malformed_json_on_optimizer_and_reset_too(
    client: TestClient, literal: bytes
) -> None:
    before = (client.get("/optimizer").json(), snapshot(client))
    for method, path, text in (
        ("PUT", "/optimizer", b'{"name": "sgd", "lr": ' + literal + b"}"),
        ("POST", "/reset", b'{"seed": ' + literal + b"}"),
    ):
        response = client.request(
            method, path, content=text, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, (path, response.text)
        assert "not valid JSON" in response.json()["detail"]
    assert (client.get("/optimizer").json(), snapshot(client)) == before
