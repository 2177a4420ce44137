"""POST /explain: every layer's output and the saliency map, equal to torch, changing nothing."""

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import image_batch, local_explanation, local_net, training_state
from tests.server import LiveServer


@pytest.mark.parametrize("target", [None, 3])
def test_explain_equals_the_local_computation(client: TestClient, target: int | None) -> None:
    net = local_net()
    image = torch.from_numpy(image_batch(1, seed=11))
    body: dict[str, object] = {"inputs": image[0, 0].tolist()}
    if target is not None:
        body["target"] = target
    answer = client.post("/explain", json=body)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    expected = local_explanation(net, image, target)
    assert served["target"] == expected["target"]
    assert served["prediction"] == expected["prediction"]
    shapes = {"conv1": (6, 28, 28), "pool1": (6, 14, 14), "conv2": (16, 10, 10)}
    shapes.update(pool2=(16, 5, 5), fc1=(120,), fc2=(84,), fc3=(10,))
    for name, shape in shapes.items():
        layer = np.asarray(served["activations"][name], dtype=np.float32)
        assert layer.shape == shape, name
        np.testing.assert_allclose(layer, expected["activations"][name], atol=1e-5)
    np.testing.assert_allclose(served["outputs"], expected["outputs"], atol=1e-5)
    np.testing.assert_allclose(served["activations"]["fc3"], served["outputs"], atol=0)
    np.testing.assert_allclose(
        served["probabilities"], torch.softmax(torch.tensor(served["outputs"]), 0), atol=1e-6
    )
    saliency = np.asarray(served["saliency"], dtype=np.float32)
    assert saliency.shape == (32, 32)
    np.testing.assert_allclose(saliency, expected["saliency"], atol=1e-5)
    assert (served["version"], served["step"]) == (0, 0)


def test_explain_resizes_as_predict_does(client: TestClient) -> None:
    small = image_batch(1, seed=12, side=28)
    explained = client.post("/explain", json={"inputs": small.tolist()}).json()
    predicted = client.post("/predict", json={"inputs": small.tolist()}).json()
    np.testing.assert_allclose(explained["outputs"], predicted["outputs"][0], atol=1e-5)


def test_explain_changes_nothing_gradients_included(client: TestClient) -> None:
    image = image_batch(1).tolist()
    assert (
        client.post("/backward", json={"inputs": image, "grad_outputs": [1.0] * 10}).status_code
        == 200
    )
    before = training_state(client)
    for target in (None, 0, 9):
        body = {"inputs": image} if target is None else {"inputs": image, "target": target}
        assert client.post("/explain", json=body).status_code == 200
    assert training_state(client) == before


@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        ({"inputs": image_batch(2).tolist()}, 422, "exactly one image"),
        ({"inputs": image_batch(1).tolist(), "target": 10}, 422, "class index"),
        ({"inputs": image_batch(1).tolist(), "target": 1.0}, 422, "class index"),
        ({"inputs": image_batch(1).tolist(), "other": 1}, 422, "unknown"),
        ({"inputs": image_batch(1).tolist(), "version": 99}, 404, "not resident"),
    ],
)
def test_bad_explain_bodies(client: TestClient, body: dict, status: int, where: str) -> None:
    answer = client.post("/explain", json=body)
    assert answer.status_code == status, answer.text
    assert where in answer.json()["detail"]


@pytest.mark.server
def test_explain_needs_no_token_on_a_real_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.server import start_test_server

    server: LiveServer = start_test_server(tmp_path, seed=0, api_token="secret-token-1")
    try:
        with server.client() as http:
            answer = http.post("/explain", json={"inputs": image_batch(1).tolist()})
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["saliency"]) == 32
            assert http.post("/zero-grad").status_code == 401
    finally:
        server.stop()
