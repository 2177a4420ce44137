"""Every optimizer the service offers steps exactly as the torch.optim class it names."""

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TOLERANCE, exported_weights, image_batch, local_net, snapshot

CONFIGS: list[dict[str, Any]] = [
    {"name": "sgd", "lr": 0.05},
    {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    {"name": "sgd", "lr": 0.02, "momentum": 0.5, "dampening": 0.1},
    {"name": "adam", "lr": 1e-3},
    {"name": "adam", "lr": 2e-3, "betas": [0.8, 0.99], "eps": 1e-6, "amsgrad": True},
    {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
    {"name": "rmsprop", "lr": 1e-3},
    {"name": "rmsprop", "lr": 1e-3, "momentum": 0.9, "centered": True, "alpha": 0.9},
]
TORCH_CLASSES = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_steps_equal_torch_optim(client: Any, config: dict[str, Any]) -> None:
    answer = client.put("/optimizer", json=config)
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == config["name"]
    net = local_net()
    hyper = {k: tuple(v) if k == "betas" else v for k, v in config.items() if k != "name"}
    optimizer = TORCH_CLASSES[config["name"]](net.parameters(), **hyper)
    for index in range(3):
        images = image_batch(6, seed=10 + index)
        labels = np.random.default_rng(index).integers(0, 10, 6).tolist()
        step = client.post("/train-step", json={"inputs": images.tolist(), "targets": labels})
        assert step.status_code == 200, step.text
        optimizer.zero_grad()
        F.cross_entropy(net(torch.from_numpy(images)), torch.tensor(labels)).backward()
        optimizer.step()
    served = exported_weights(client)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(served[name], value, **TOLERANCE, msg=name)


def test_get_shows_torch_defaults_for_fields_left_out(client: Any) -> None:
    assert client.get("/optimizer").json() == {
        "name": "sgd",
        "lr": 0.01,
        "momentum": 0.0,
        "dampening": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
    }
    body = client.put("/optimizer", json={"name": "adamw"}).json()
    assert body == {
        "name": "adamw",
        "lr": 1e-3,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 1e-2,
        "amsgrad": False,
    }
    assert client.get("/optimizer").json() == body


def test_changing_optimizer_keeps_weights_and_version_and_resets_state(client: Any) -> None:
    client.put("/optimizer", json={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    images = image_batch(4)
    client.post("/train-step", json={"inputs": images.tolist(), "targets": [1, 2, 3, 4]})
    before = snapshot(client)
    assert client.put("/optimizer", json={"name": "sgd", "lr": 0.1, "momentum": 0.9}).is_success
    assert snapshot(client) == before
    # Fresh momentum: the next step equals a fresh SGD's first step from these weights.
    net = local_net()
    net.load_state_dict(exported_weights(client))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    client.post("/train-step", json={"inputs": images.tolist(), "targets": [1, 2, 3, 4]})
    optimizer.zero_grad()
    F.cross_entropy(net(torch.from_numpy(images)), torch.tensor([1, 2, 3, 4])).backward()
    optimizer.step()
    served = exported_weights(client)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(served[name], value, **TOLERANCE, msg=name)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "lbfgs"}, "name"),
        ({"name": "sgd", "lr": 0}, "lr"),
        ({"name": "sgd", "lr": -1}, "lr"),
        ({"name": "sgd", "lr": "0.1"}, "lr"),
        ({"name": "sgd", "momentum": -0.5}, "momentum"),
        ({"name": "sgd", "nesterov": True}, "nesterov"),
        ({"name": "sgd", "nesterov": 1}, "nesterov"),
        ({"name": "adam", "betas": [0.9]}, "betas"),
        ({"name": "adam", "betas": [1.5, 0.9]}, "betas"),
        ({"name": "adam", "eps": 0}, "eps"),
        ({"name": "rmsprop", "alpha": 2}, "alpha"),
        ({"name": "adam", "momentum": 0.9}, "momentum"),
        ({"lr": 0.1}, "name"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(
    client: Any, body: dict[str, Any], field: str
) -> None:
    before = client.get("/optimizer").json()
    answer = client.put("/optimizer", json=body)
    assert answer.status_code == 422, answer.text
    assert field in str(answer.json()["detail"])
    assert client.get("/optimizer").json() == before


def test_lr_over_the_configured_maximum_is_refused(make_client: Any) -> None:
    client = make_client(max_lr=1.0)
    answer = client.put("/optimizer", json={"name": "sgd", "lr": 2.0})
    assert answer.status_code == 422
    assert "LENET_MAX_LR" in answer.json()["detail"]
