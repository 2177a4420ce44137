"""app.routes.params: GET /params, GET /model, GET /params/export, PUT /params/import."""

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as save_safetensors

from models.lenet import Net
from tests.conftest import (
    exported_weights,
    local_net,
    same_weights,
    served_weights,
    train,
)

ClientFactory = Callable[..., TestClient]


def test_seed_gives_manual_seed_then_net_weights(make_client: Any) -> None:
    client = make_client(seed=42)
    torch.manual_seed(42)
    expected = Net().state_dict()
    served = exported_weights(client)
    for name, value in expected.items():
        assert torch.equal(served[name], value), name


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


def test_import_is_a_new_version_at_step_zero_with_a_fresh_optimizer(
    make_client: ClientFactory,
) -> None:
    momentum = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    imported = {k: torch.from_numpy(v) for k, v in served_weights(make_client(seed=7)).items()}
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
    assert same_weights(served_weights(used), served_weights(fresh))
