"""LENET_API_TOKEN: every request that changes the model or its training state needs the bearer
token; reading stays open; a wrong or missing token is 401 and changes nothing."""

import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as save_safetensors

from app import cli
from tests.conftest import image_batch, local_net, training_state

TOKEN = "s3cret-token-0123456789"
ONE_IMAGE = image_batch(1)[0, 0].tolist()
TRAIN = {"inputs": ONE_IMAGE, "targets": [3]}

# Every request that changes weights, gradients, the optimizer or checkpoints.
MUTATING: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/train-step", {"json": TRAIN}),
    ("POST", "/loss", {"json": {**TRAIN, "backward": True}}),
    ("PUT", "/optimizer", {"json": {"name": "adam", "lr": 0.001}}),
    ("POST", "/reset", {"json": {"seed": 3}}),
    ("POST", "/checkpoints", {}),
    ("POST", "/checkpoints/{id}/restore", {}),
    ("POST", "/zero-grad", {}),
    ("POST", "/backward", {"json": {"inputs": ONE_IMAGE, "grad_outputs": [1.0] * 10}}),
    ("POST", "/step", {}),
    (
        "PUT",
        "/params/import",
        {
            "content": save_safetensors(
                {n: p.detach() for n, p in local_net(9).named_parameters()}
            ),
            "headers": {"content-type": "application/octet-stream"},
        },
    ),
]
MUTATING_PATHS = {(method, path) for method, path, _ in MUTATING}

BAD_AUTHORIZATION: list[dict[str, str | bytes]] = [
    {},  # missing
    {"authorization": ""},
    {"authorization": "Bearer"},
    {"authorization": "Bearer "},
    {"authorization": f"Bearer {TOKEN[:-1]}x"},  # wrong, same length
    {"authorization": f"Bearer {TOKEN[:-1]}"},  # a prefix: another length
    {"authorization": f"Bearer {TOKEN}x"},  # longer
    {"authorization": f"Basic {TOKEN}"},
    {"authorization": "Basic abc"},
    {"authorization": TOKEN},  # no scheme
    {"authorization": f"Token {TOKEN}"},
    {"authorization": f"Bearer {TOKEN[:-1]}\xe9".encode("latin-1")},  # not ASCII
    {"x-api-token": TOKEN},  # the right token in the wrong place
]


def _call(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any], checkpoint_id: str
) -> Any:
    return client.request(method, path.format(id=checkpoint_id), **kwargs)


@pytest.fixture
def guarded(make_client: Callable[..., TestClient]) -> tuple[TestClient, str]:
    """A client on a service with a token, one step taken, and a checkpoint to restore."""
    client = make_client(api_token=TOKEN)
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert client.post("/train-step", json=TRAIN, headers=bearer).status_code == 200
    saved = client.post("/checkpoints", headers=bearer)
    assert saved.status_code == 201
    return client, saved.json()["id"]


@pytest.mark.parametrize("headers", BAD_AUTHORIZATION, ids=lambda h: repr(h)[:40])
def test_a_missing_or_wrong_token_is_401_and_changes_nothing(
    guarded: tuple[TestClient, str], headers: dict[str, Any]
) -> None:
    client, checkpoint_id = guarded
    before = training_state(client)
    for method, path, kwargs in MUTATING:
        response = _call(
            client,
            method,
            path,
            {**kwargs, "headers": {**kwargs.get("headers", {}), **headers}},
            checkpoint_id,
        )
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert isinstance(response.json()["detail"], str)
        assert TOKEN not in response.text
    assert training_state(client) == before


def test_the_token_opens_every_mutating_request(guarded: tuple[TestClient, str]) -> None:
    client, checkpoint_id = guarded
    for scheme in ("Bearer", "bearer"):  # the scheme is case-insensitive (RFC 9110)
        for method, path, kwargs in MUTATING:
            headers = {**kwargs.get("headers", {}), "authorization": f"{scheme} {TOKEN}"}
            response = _call(client, method, path, {**kwargs, "headers": headers}, checkpoint_id)
            assert response.is_success, (method, path, response.text)


def test_a_bad_body_with_a_bad_token_is_401_not_422(guarded: tuple[TestClient, str]) -> None:
    client, _ = guarded
    response = client.post("/train-step", content=b"{not json", headers={"authorization": "x"})
    assert response.status_code == 401


def test_reading_stays_open(guarded: tuple[TestClient, str]) -> None:
    client, _ = guarded
    for path in (
        "/healthz",
        "/readyz",
        "/params",
        "/params?values=true&grads=true",
        "/params/export",
        "/model",
        "/optimizer",
        "/checkpoints",
        "/openapi.json",
    ):
        assert client.get(path).status_code == 200, path
    assert client.post("/predict", json={"inputs": ONE_IMAGE}).status_code == 200


def test_without_a_token_everything_is_open(client: TestClient) -> None:
    assert client.post("/train-step", json=TRAIN).status_code == 200
    saved = client.post("/checkpoints")
    assert saved.status_code == 201
    assert client.post(f"/checkpoints/{saved.json()['id']}/restore").status_code == 200


def test_exactly_the_mutating_routes_need_the_token(guarded: tuple[TestClient, str]) -> None:
    # Every documented operation, called without a token: the 401s are the guarded ones.
    client, checkpoint_id = guarded
    guarded_routes, open_writes = set(), set()
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        concrete = re.sub(
            r"\{(\w+)\}", lambda m: checkpoint_id if "checkpoint" in m[1] else "lenet", path
        )
        for method in operations:
            method = method.upper()
            status = client.request(method, concrete).status_code
            if status == 401:
                guarded_routes.add((method, re.sub(r"\{\w+\}", "{id}", path)))
            elif method not in ("GET", "HEAD"):
                open_writes.add((method, path))
    assert guarded_routes == MUTATING_PATHS
    # Whatever else writes must be a prediction (it reads the weights and changes nothing).
    # Triton's repository index is a POST that only reads (tritonclient sends it so).
    reads = ("/explain", "/v2/repository/index")
    assert open_writes and all(
        "predict" in p or "infer" in p or p in reads for _, p in open_writes
    ), open_writes


EXPOSED_WARNING = "without LENET_API_TOKEN"


@pytest.mark.skipif(
    torch.backends.mps.is_available(), reason="needs a machine where LENET_DEVICE=mps fails"
)
@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [("0.0.0.0", None, True), ("0.0.0.0", TOKEN, False), ("127.0.0.1", None, False)],
)
def test_serving_beyond_loopback_without_a_token_warns(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    host: str,
    token: str | None,
    warned: bool,
) -> None:
    # `lenet serve` decides the warning before it builds the app; an unavailable device then
    # stops it at create_app, so this runs the real command path and never binds a socket.
    for name in ("LENET_API_TOKEN", "LENET_HOST", "LENET_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LENET_DEVICE", "mps")
    if token is not None:
        monkeypatch.setenv("LENET_API_TOKEN", token)
    with (
        caplog.at_level(logging.WARNING, logger="lenet.cli"),
        pytest.raises(RuntimeError, match="MPS"),
    ):
        cli.main(["serve", "--host", host, "--port", "1"])
    warnings = [r for r in caplog.records if r.name == "lenet.cli" and r.levelno == logging.WARNING]
    assert any(EXPOSED_WARNING in r.getMessage() for r in warnings) is warned
    if token is not None:
        assert all(token not in r.getMessage() for r in caplog.records)
