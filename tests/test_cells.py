"""The tutorial's cells, one route each: /zero-grad, /backward, /step and /loss's zero_grad,
each compared with the same cells run locally in torch."""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import exported_weights, image_batch, local_net, training_state

ClientFactory = Callable[..., TestClient]


def grads_of(client: TestClient) -> dict[str, np.ndarray | None]:
    """The served gradients, by name (None where a parameter has none)."""
    body = client.get("/params", params={"grads": "true"}).json()
    return {
        p["name"]: None if p["grad"] is None else np.asarray(p["grad"], dtype=np.float32)
        for p in body["parameters"]
    }


def assert_grads_equal(client: TestClient, net: torch.nn.Module) -> None:
    served = grads_of(client)
    for name, parameter in net.named_parameters():
        if parameter.grad is None:
            assert served[name] is None, name
        else:
            np.testing.assert_allclose(served[name], parameter.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_backward_with_given_gradients_equals_torch(client: TestClient) -> None:
    net = local_net()
    image = torch.from_numpy(image_batch(1))
    grad = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 10)).astype(np.float32))
    answer = client.post(
        "/backward", json={"inputs": image.tolist(), "grad_outputs": grad[0].tolist()}
    )
    assert answer.status_code == 200, answer.text
    net.zero_grad()
    out = net(image)
    out.backward(grad)
    body = answer.json()
    np.testing.assert_allclose(body["outputs"], out.detach().numpy(), atol=1e-5)
    expected_norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in net.parameters()])
    )
    assert body["grad_norm"] == pytest.approx(float(expected_norm), rel=1e-5)
    assert (body["version"], body["step"]) == (0, 0)
    assert_grads_equal(client, net)


def test_gradients_accumulate_without_zero_grad(client: TestClient) -> None:
    net = local_net()
    images = torch.from_numpy(image_batch(2, seed=4))
    grads = [torch.full((2, 10), 0.5), torch.full((2, 10), -0.25)]
    net.zero_grad()
    for index, grad in enumerate(grads):
        body = {"inputs": images.tolist(), "grad_outputs": grad.tolist(), "zero_grad": index == 0}
        assert client.post("/backward", json=body).status_code == 200
        net(images).backward(grad)
    assert_grads_equal(client, net)
    # zero_grad true (the default) starts over.
    body = {"inputs": images.tolist(), "grad_outputs": grads[0].tolist()}
    assert client.post("/backward", json=body).status_code == 200
    net.zero_grad()
    net(images).backward(grads[0])
    assert_grads_equal(client, net)


def test_loss_backward_accumulates_with_zero_grad_false(client: TestClient) -> None:
    net = local_net()
    image = torch.from_numpy(image_batch(1, seed=5))
    target = torch.arange(1, 11, dtype=torch.float32)
    body = {"inputs": image.tolist(), "targets": target.tolist(), "loss": "mse", "backward": True}
    first = client.post("/loss", json=body)
    assert first.status_code == 200 and first.json()["loss_name"] == "mse"
    assert client.post("/loss", json={**body, "zero_grad": False}).status_code == 200
    net.zero_grad()
    for _ in range(2):
        torch.nn.functional.mse_loss(net(image), target.view(1, -1)).backward()
    assert_grads_equal(client, net)


def test_zero_grad_makes_every_gradient_null(client: TestClient) -> None:
    body = {"inputs": image_batch(1).tolist(), "grad_outputs": [1.0] * 10}
    assert client.post("/backward", json=body).status_code == 200
    assert all(g is not None for g in grads_of(client).values())
    answer = client.post("/zero-grad")
    assert answer.status_code == 200 and answer.json() == {"version": 0, "step": 0}
    assert all(g is None for g in grads_of(client).values())


@pytest.mark.parametrize("lr", [None, 0.2])
def test_step_equals_optimizer_step_and_keeps_the_gradients(
    client: TestClient, lr: float | None
) -> None:
    net = local_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01 if lr is None else lr)
    image = torch.from_numpy(image_batch(1, seed=6))
    grad = torch.linspace(-1, 1, 10).view(1, 10)
    body = {"inputs": image.tolist(), "grad_outputs": grad.tolist()}
    assert client.post("/backward", json=body).status_code == 200
    answer = client.post("/step", json={} if lr is None else {"lr": lr})
    assert answer.status_code == 200, answer.text
    optimizer.zero_grad()
    net(image).backward(grad)
    optimizer.step()
    result = answer.json()
    assert (result["version"], result["step"]) == (1, 1)
    assert result["optimizer"]["lr"] == (0.01 if lr is None else lr)
    assert client.get("/optimizer").json()["lr"] == 0.01  # a one-step lr only
    served = exported_weights(client)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(served[name], value, rtol=0, atol=1e-6)
    assert_grads_equal(client, net)  # torch keeps .grad after step()
    # An empty body steps with the optimizer's own lr too.
    assert client.post("/step").status_code == 200


def test_step_without_gradients_is_409_and_changes_nothing(client: TestClient) -> None:
    before = training_state(client)
    answer = client.post("/step")
    assert answer.status_code == 409
    assert "/backward" in answer.json()["detail"]
    assert training_state(client) == before


def test_non_finite_gradients_are_refused_and_the_old_ones_stay(client: TestClient) -> None:
    image = image_batch(1).tolist()
    assert (
        client.post("/backward", json={"inputs": image, "grad_outputs": [1.0] * 10}).status_code
        == 200
    )
    before = training_state(client)
    huge = {"inputs": image, "grad_outputs": [3e38] * 10, "zero_grad": False}
    for _ in range(2):  # the first may stay finite; adding more overflows float32
        answer = client.post("/backward", json=huge)
        if answer.status_code == 422:
            break
        before = training_state(client)
    assert answer.status_code == 422, answer.text
    assert "not finite" in answer.json()["detail"]
    assert training_state(client) == before


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"grad_outputs": [1.0] * 10}, "exactly one"),
        ({"inputs": image_batch(2).tolist(), "grad_outputs": [1.0] * 10}, "grad_outputs"),
        ({"inputs": image_batch(1).tolist(), "grad_outputs": [1.0] * 9}, "grad_outputs"),
        ({"inputs": image_batch(1).tolist(), "grad_outputs": ["1"] * 10}, "numbers"),
        ({"inputs": image_batch(1).tolist(), "grad_outputs": [1.0] * 10, "zero_grad": 0}, "true"),
        ({"inputs": image_batch(1).tolist(), "grad_outputs": [1.0] * 10, "extra": 1}, "unknown"),
    ],
)
def test_bad_backward_bodies_are_422_and_change_nothing(
    client: TestClient, body: dict[str, object], where: str
) -> None:
    before = training_state(client)
    answer = client.post("/backward", json=body)
    assert answer.status_code == 422, answer.text
    assert where in answer.json()["detail"]
    assert training_state(client) == before


@pytest.mark.parametrize("body", [{"lr": 0}, {"lr": "0.1"}, {"lr": 1e9}, {"other": 1}])
def test_bad_step_bodies_are_422(client: TestClient, body: dict[str, object]) -> None:
    image = image_batch(1).tolist()
    client.post("/backward", json={"inputs": image, "grad_outputs": [1.0] * 10})
    before = training_state(client)
    assert client.post("/step", json=body).status_code == 422
    assert training_state(client) == before


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/zero-grad"), ("POST", "/backward"), ("POST", "/step")]
)
def test_the_cells_need_the_token(make_client: ClientFactory, method: str, path: str) -> None:
    client = make_client(api_token="secret-token-1")
    before = training_state(client)
    answer = client.request(method, path, json={"inputs": image_batch(1).tolist()})
    assert answer.status_code == 401
    assert training_state(client) == before
