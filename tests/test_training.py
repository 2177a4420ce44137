"""Training semantics: /loss, the NaN guard, reset, versions and LENET_SEED."""

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.lenet import Net
from tests.conftest import exported_weights, image_batch, local_net, snapshot


def _step(client: Any, images: np.ndarray, targets: Any, **extra: Any) -> Any:
    return client.post("/train-step", json={"inputs": images.tolist(), "targets": targets, **extra})


def test_seed_gives_manual_seed_then_net_weights(make_client: Any) -> None:
    client = make_client(seed=42)
    torch.manual_seed(42)
    expected = Net().state_dict()
    served = exported_weights(client)
    for name, value in expected.items():
        assert torch.equal(served[name], value), name


def test_versions_and_steps_grow_by_one_per_step(client: Any) -> None:
    images = image_batch(2)
    for expected in range(1, 4):
        body = _step(client, images, [1, 2]).json()
        assert (body["version"], body["step"]) == (expected, expected)
    model = client.get("/model").json()
    assert (model["version"], model["step"]) == (3, 3)


def test_loss_without_backward_changes_nothing(client: Any) -> None:
    images = image_batch(3)
    before = snapshot(client)
    body = client.post("/loss", json={"inputs": images.tolist(), "targets": [0, 1, 2]}).json()
    expected = F.cross_entropy(local_net()(torch.from_numpy(images)), torch.tensor([0, 1, 2]))
    assert body["loss"] == pytest.approx(expected.item(), rel=1e-5)
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
        np.testing.assert_allclose(entry["grad"], parameter.grad.numpy(), atol=1e-6)
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


def test_huge_lr_is_refused_by_the_bound(client: Any) -> None:
    before = snapshot(client)
    answer = _step(client, image_batch(2), [1, 2], lr=1e30)
    assert answer.status_code == 422
    assert "LENET_MAX_LR" in answer.json()["detail"]
    assert snapshot(client) == before


def test_non_finite_step_is_refused_whole(make_client: Any) -> None:
    """With the bound lifted, lr 1e38 makes weights overflow: the step is undone exactly,
    weights, gradients, momentum buffers and counters alike."""
    client = make_client(max_lr=1e38)
    client.put("/optimizer", json={"name": "sgd", "lr": 0.01, "momentum": 0.9})
    images = image_batch(4)
    assert _step(client, images, [1, 2, 3, 4]).status_code == 200  # momentum has state now
    before = snapshot(client)
    grads_before = client.get("/params", params={"grads": "true"}).json()["parameters"]
    # lr 1e30 alone stays finite; larger inputs make gradients large enough to overflow.
    answer = _step(client, images * 100, [1, 2, 3, 4], lr=1e38)
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
    assert _step(client, images, [1, 2, 3, 4]).json()["step"] == 2
    served = exported_weights(client)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(served[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_lr_1e30_is_refused_by_the_guard_once_the_loss_overflows(make_client: Any) -> None:
    """lr 1e30 (allowed here) leaves huge but finite weights; the next step's loss is NaN, and
    that step is refused whole."""
    client = make_client(max_lr=1e38)
    images = image_batch(4)
    first = _step(client, images, [1, 2, 3, 4], lr=1e30)
    assert first.status_code == 200, first.text
    before = snapshot(client)
    second = _step(client, images, [1, 2, 3, 4], lr=1e30)
    assert second.status_code == 422, second.text
    assert "not finite" in second.json()["detail"]
    assert snapshot(client) == before
    assert client.get("/readyz").status_code == 200


def test_extreme_inputs_with_mse_are_refused(client: Any) -> None:
    before = snapshot(client)
    images = np.full((1, 1, 32, 32), 3e38, dtype=np.float32)
    answer = _step(client, images, [float(v) for v in range(10)], loss="mse")
    assert answer.status_code == 422, answer.text
    assert snapshot(client) == before


def test_reset_gives_new_seeded_weights_and_a_larger_version(client: Any) -> None:
    _step(client, image_batch(2), [1, 2])
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


def test_params_filters_and_statistics(client: Any) -> None:
    body = client.get(
        "/params", params=[("name", "fc3.bias"), ("name", "conv1.weight"), ("values", "true")]
    ).json()
    assert body["count"] == 2 and body["total"] == 10 + 150
    entry = next(p for p in body["parameters"] if p["name"] == "conv1.weight")
    tensor = local_net().conv1.weight.detach()
    assert entry["stats"]["std"] == pytest.approx(torch.std(tensor).item(), rel=1e-5)
    assert entry["stats"]["norm"] == pytest.approx(tensor.norm().item(), rel=1e-5)
    np.testing.assert_allclose(entry["values"], tensor.numpy(), atol=0)
    assert client.get("/params", params={"name": "fc4.bias"}).status_code == 404


def test_model_describes_layers(client: Any) -> None:
    body = client.get("/model").json()
    assert body["repr"] == repr(Net())
    assert [layer["output_shape"] for layer in body["layers"]] == [
        [6, 28, 28],
        [16, 10, 10],
        [120],
        [84],
        [10],
    ]
    assert body["parameters"] == 61706
    assert body["input_shape"] == [1, 32, 32] and body["num_classes"] == 10
