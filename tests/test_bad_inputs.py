"""A battery of malformed and hostile requests against the real server.

Each one must be answered with a 4xx and a JSON body in the route family's shape (`{"detail":
...}`, or `{"error": ...}` under /v2); after all of them the weights, version and step are exactly
as before, the process is alive and ready, and no pickle from a request was ever run.
"""

import base64
import io
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

from tests.conftest import image_batch, local_net, training_state
from tests.server import LiveServer, start_test_server

pytestmark = [pytest.mark.server]

JSON = {"content-type": "application/json"}
IMAGE = image_batch(1)[0, 0].tolist()
MODEL_WEIGHTS = {name: p.detach().clone() for name, p in local_net(3).named_parameters()}


class _RunsOnUnpickle:
    """A pickle payload that creates `marker` if anything ever unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _b64(shape: list[int], nbytes: int | None = None) -> dict[str, Any]:
    count = int(np.prod(shape)) * 4 if nbytes is None else nbytes
    return {"shape": shape, "dtype": "float32", "data": base64.b64encode(b"\0" * count).decode()}


def _raw(text: bytes) -> dict[str, Any]:
    return {"content": text, "headers": JSON}


def _weights(**changes: torch.Tensor | None) -> bytes:
    tensors = dict(MODEL_WEIGHTS)
    for name, tensor in changes.items():
        name = name.replace("__", ".")
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    return bytes(save_safetensors(tensors))


def _png(size: tuple[int, int] = (28, 28)) -> bytes:
    out = io.BytesIO()
    Image.new("L", size).save(out, format="PNG")
    return out.getvalue()


def _battery(marker: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx keyword arguments) for every bad request."""
    good = save_safetensors(MODEL_WEIGHTS)
    torch_pickle = io.BytesIO()
    torch.save(dict(MODEL_WEIGHTS), torch_pickle)
    evil = pickle.dumps({"conv1.weight": _RunsOnUnpickle(marker)})
    header_len = struct.unpack("<Q", good[:8])[0]
    items: list[tuple[str, str, dict[str, Any]]] = []

    def add(method: str, path: str, **kwargs: Any) -> None:
        items.append((method, path, kwargs))

    # -- /predict: shapes and ranks
    for inputs in (
        3.0,
        [],
        [[]],
        [[[]]],
        [[[[]]]],
        [0.0, 1.0, 2.0],
        [[[[[0.0]]]]],
        [[0.0, 1.0], [2.0]],
        [[[0.0, 1.0]], [[0.0]]],
        [[[0.0], 1.0]],
        np.zeros((1, 3, 8, 8)).tolist(),
        np.zeros((2, 0, 8)).tolist(),
        {"data": IMAGE},
        "[[0.0]]",
        None,
    ):
        add("POST", "/predict", json={"inputs": inputs})
    # -- /predict: pixel types and values
    for bad in ("0.5", True, False, None, [0.5], {}, 1e39, -1e39):
        image = [row[:] for row in IMAGE]
        image[5][7] = bad
        add("POST", "/predict", json={"inputs": image})
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1e309", b"nan", b"inf"):
        add("POST", "/predict", **_raw(b'{"inputs": [[' + literal + b", 0.0], [0.0, 0.0]]}"))
    # -- /predict: the body itself
    for text in (
        b"",
        b"{",
        b"[]",
        b"null",
        b"3",
        b'"inputs"',
        b"\xff\xfe",
        b'{"inputs": [[0.0]]}x',
    ):
        add("POST", "/predict", **_raw(text))
    add("POST", "/predict", json={"inputs": IMAGE, "tensor": _b64([32, 32])})
    add("POST", "/predict", json={})
    add("POST", "/predict", json={"input": IMAGE})
    add("POST", "/predict", json={"inputs": IMAGE, "invert": True})
    # -- /predict: the base64 form
    for tensor in (
        _b64([1, 32, 32], nbytes=4 * 32 * 32 - 4),
        _b64([1, 32, 32], nbytes=4 * 32 * 32 + 4),
        _b64([2, 32, 32], nbytes=4 * 32 * 32),
        {**_b64([32, 32]), "data": "!!!!" * 1366},
        {**_b64([32, 32]), "data": 123},
        {**_b64([32, 32]), "dtype": "float16"},
        {**_b64([32, 32]), "dtype": "int8"},
        {**_b64([32, 32]), "shape": [-32, -32]},
        {**_b64([32, 32]), "shape": ["32", "32"]},
        {**_b64([32, 32]), "shape": [32.0, 32.0]},
        {**_b64([32, 32]), "shape": [True, 32]},
        {**_b64([32, 32]), "shape": []},
        {**_b64([32, 32]), "shape": [2**40, 1, 1]},
        {**_b64([32, 32]), "shape": [1, 1, 1, 32, 32]},
        {**_b64([32, 32]), "shape": [0, 32, 32]},
        {**_b64([32, 32]), "extra": 1},
        {"shape": [32, 32], "dtype": "float32"},
        "AAAA",
        [1, 2],
        _b64([1, 3, 8, 8]),
    ):
        add("POST", "/predict", json={"tensor": tensor})
    # -- content types (415)
    body = orjson.dumps({"inputs": IMAGE})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        add("POST", "/predict", content=body, headers={"content-type": content_type})
        add("POST", "/train-step", content=body, headers={"content-type": content_type})
    add("POST", "/predict", content=body)  # no content type at all
    add("POST", "/predict", files={"inputs": ("x.json", body, "application/json")})
    # -- /train-step and /loss: targets, lr, loss, flags
    for targets in (
        [-1],
        [10],
        [3.5],
        [3.0],
        ["3"],
        [True],
        [None],
        3,
        [],
        [1, 2],
        [[3]],
        [[0.1] * 9],
        [[[0.1] * 10]],
        [[0.1] * 10, [0.1] * 10],
        [1e39] * 10,
    ):
        add("POST", "/train-step", json={"inputs": IMAGE, "targets": targets})
    add("POST", "/train-step", json={"inputs": IMAGE})
    for lr in (0, -1, 1e30, 10.5, "0.1", "NaN", True, [0.1], {}):
        add("POST", "/train-step", json={"inputs": IMAGE, "targets": [3], "lr": lr})
    for literal in (b"NaN", b"Infinity", b"1e309"):
        add(
            "POST",
            "/train-step",
            **_raw(b'{"inputs": [[0.0]], "targets": [3], "lr": ' + literal + b"}"),
        )
    for loss in ("hinge", "", 1, None, "MSE"):
        if loss is None:
            continue
        add("POST", "/train-step", json={"inputs": IMAGE, "targets": [3], "loss": loss})
    add("POST", "/train-step", json={"inputs": IMAGE, "targets": [3], "loss": "mse"})
    add("POST", "/train-step", json={"inputs": IMAGE, "targets": [3], "epochs": 2})
    add("POST", "/train-step", json={"tensor": _b64([1, 32, 32]), "inputs": IMAGE, "targets": [3]})
    add("POST", "/train-step", json={"targets": [3]})
    for flag in ("yes", 1, None, [True]):
        add("POST", "/loss", json={"inputs": IMAGE, "targets": [3], "backward": flag})
        add("POST", "/loss", json={"inputs": IMAGE, "targets": [3], "graph": flag})
    add("POST", "/loss", json={"inputs": IMAGE, "targets": [11], "backward": True})
    # -- PUT /optimizer and POST /reset
    for config in (
        {"name": "lbfgs"},
        {"name": "sgd", "lr": -1},
        {"name": "sgd", "lr": 0},
        {"name": "sgd", "lr": 1e30},
        {"name": "sgd", "lr": "0.1"},
        {"name": "sgd", "momentum": -0.5},
        {"name": "sgd", "nesterov": True},
        {"name": "sgd", "learning_rate": 0.1},
        {"name": "adam", "betas": [0.9]},
        {"name": "adam", "betas": [1.5, 0.9]},
        {"name": "adam", "eps": 0},
        {"lr": 0.1},
        [],
        None,
    ):
        add("PUT", "/optimizer", json=config)
    add("PUT", "/optimizer", **_raw(b'{"name": "sgd", "lr": NaN}'))
    add("PUT", "/optimizer", content=b'{"name": "sgd"}', headers={"content-type": "text/plain"})
    for reset in ({"seed": -1}, {"seed": "1"}, {"seed": 1.5}, {"seed": 2**64}, {"seeds": 1}, [1]):
        add("POST", "/reset", json=reset)
    add("POST", "/reset", content=b"{", headers=JSON)
    add("POST", "/reset", content=b'{"seed": 1}', headers={"content-type": "text/plain"})
    # -- PUT /params/import: truncated, pickles, wrong tensors, not safetensors at all
    for payload in (
        good[: len(good) // 2],
        good[: 8 + header_len - 5],
        good[:7],
        b"",
        pickle.dumps({k: v.numpy() for k, v in MODEL_WEIGHTS.items()}),
        torch_pickle.getvalue(),
        evil,
        struct.pack("<Q", 2**62) + good[8:],
        struct.pack("<Q", header_len + 1000) + good[8:],
        b"\0" * 4096,
        orjson.dumps({"conv1.weight": [[0.0]]}),
        _weights(conv1__weight=None),
        _weights(extra__weight=torch.zeros(3)),
        _weights(fc3__bias=torch.zeros(10, dtype=torch.float64)),
        _weights(fc3__bias=torch.zeros(10, dtype=torch.float16)),
        _weights(fc3__bias=torch.zeros(11)),
        _weights(fc3__bias=torch.zeros(1, 10)),
        _weights(fc3__bias=torch.full((10,), float("nan"))),
        _weights(fc3__bias=torch.full((10,), float("inf"))),
        _weights(fc3__bias=torch.zeros(10, dtype=torch.int32)),
    ):
        add("PUT", "/params/import", content=payload)
    add("POST", "/params/import", content=good)  # wrong method
    # -- checkpoints, params, model
    for checkpoint_id in ("nope", "..", "%2e%2e", "..%2F..%2Fetc", ".tmp-x", " ", "a" * 300):
        add("POST", f"/checkpoints/{checkpoint_id}/restore")
    add("GET", "/params", params={"name": "conv9.weight"})
    add("GET", "/params", params={"name": ["conv1.weight", "../etc"]})
    add("GET", "/params", params={"values": "maybe"})
    add("DELETE", "/params")
    add("PUT", "/predict", json={"inputs": IMAGE})
    # -- /predict/image
    add("POST", "/predict/image", files={"files": ("a.png", b"not an image", "image/png")})
    add("POST", "/predict/image", files={"files": ("a.png", _png()[:40], "image/png")})
    add("POST", "/predict/image", files={"files": ("a.png", _png((300, 4)), "image/png")})
    add("POST", "/predict/image", files={"other": ("a.png", _png(), "image/png")})
    add("POST", "/predict/image", json={"files": []})
    add("POST", "/predict/image", content=_png(), headers={"content-type": "image/png"})
    # -- /v2 inference: the protocol's own error shape
    infer = "/v2/models/lenet/infer"
    for request in (
        {},
        {"inputs": []},
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [0]}]},
        {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 1, 32, 32], "data": []}]},
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": []}]},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 2, 2], "data": [0] * 4}]},
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 1], "data": ["a"]}]},
    ):
        add("POST", infer, json=request)
    add("POST", infer, **_raw(b'{"inputs": [{"name": "input", "data": [NaN]}]}'))
    add("POST", "/v2/models/resnet/infer", json={"inputs": []})
    return items


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server with seeded weights and one training step behind it."""
    root = tmp_path_factory.mktemp("bad-inputs")
    live = start_test_server(root, log_level="warning")
    yield live
    live.stop()


def test_bad_inputs_are_4xx_with_a_json_detail_and_change_nothing(
    server: LiveServer, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    battery = _battery(marker)
    failures = []
    with server.client() as client:
        trained = client.post("/train-step", json={"inputs": IMAGE, "targets": [3]})
        assert trained.status_code == 200
        assert client.post("/checkpoints").status_code == 201
        before = training_state(client)
        for method, path, kwargs in battery:
            response = client.request(method, path, **kwargs)
            key = "error" if path.startswith("/v2") else "detail"
            try:
                body = response.json()
                ok = 400 <= response.status_code < 500 and isinstance(body, dict) and key in body
            except ValueError:
                ok = False
            if not ok:
                sent = str(kwargs)[:160]
                failures.append(
                    f"{method} {path} {sent} -> {response.status_code} {response.text[:200]}"
                )
        assert not failures, f"{len(failures)} of {len(battery)} bad inputs:\n" + "\n".join(
            failures
        )
        assert training_state(client) == before
        assert client.get("/readyz").status_code == 200
        assert client.post("/predict", json={"inputs": IMAGE}).status_code == 200
    assert server.process.poll() is None
    assert not marker.exists(), "a pickle from a request was unpickled"
    assert "Traceback" not in server.log()
