"""The tutorial's cells replayed through the API of a real server."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.conftest import exported_weights, local_net
from tests.server import LiveServer

pytestmark = [pytest.mark.server]


def test_tutorial_replayed_over_http(live_server: LiveServer) -> None:
    net = local_net()
    with live_server.client() as http:
        # params = list(net.parameters()); len(params); params[0].size()
        params = http.get("/params").json()
        assert params["count"] == 10
        assert params["parameters"][0]["name"] == "conv1.weight"
        assert params["parameters"][0]["shape"] == [6, 1, 5, 5]
        assert params["total"] == 61706

        # input = torch.randn(1, 1, 32, 32); out = net(input)
        image = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        out = http.post("/predict", json={"inputs": image.tolist()}).json()
        assert len(out["outputs"]) == 1 and len(out["outputs"][0]) == 10
        np.testing.assert_allclose(out["outputs"][0], net(image)[0].tolist(), atol=1e-5)

        # target = torch.arange(1, 11); criterion = nn.MSELoss(); loss = criterion(output, target)
        target = torch.arange(1, 11, dtype=torch.float32)
        expected_loss = nn.MSELoss()(net(image), target.view(1, -1))
        body = {"inputs": image.tolist(), "targets": target.tolist(), "loss": "mse"}
        loss = http.post("/loss", json={**body, "graph": True}).json()
        assert abs(loss["loss"] - expected_loss.item()) < 1e-4
        names = [node["name"] for node in loss["graph"]["nodes"]]
        assert names[:2] == ["MseLossBackward0", "AddmmBackward0"]

        # print(net.conv1.bias.grad) before backward: None
        bias = http.get("/params", params={"name": "conv1.bias", "grads": "true"}).json()
        assert bias["parameters"][0]["grad"] is None
        assert bias["parameters"][0]["grad_stats"] is None

        # optimizer.zero_grad(); loss.backward(); optimizer.step()
        step = http.post("/train-step", json=body)
        assert step.status_code == 200, step.text
        assert step.json()["step"] == 1 and step.json()["version"] == 1

        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        optimizer.zero_grad()
        nn.MSELoss()(net(image), target.view(1, -1)).backward()
        expected_grad = net.conv1.bias.grad
        assert expected_grad is not None
        optimizer.step()

        bias = http.get("/params", params={"name": "conv1.bias", "grads": "true"}).json()
        np.testing.assert_allclose(bias["parameters"][0]["grad"], expected_grad.tolist(), atol=1e-6)
        served = exported_weights(http)
        for name, value in net.state_dict().items():
            torch.testing.assert_close(served[name], value, rtol=0, atol=1e-6)
