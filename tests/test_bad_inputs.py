"""A battery of malformed and hostile requests against the real server.

Each one must be answered with the status the contract names and a JSON body in the route
family's shape (`{"detail": ...}`, or `{"error": ...}` under /v2); after all of them the weights,
version and step are exactly as before, the process is alive and ready, and no pickle from a
request was ever run.
"""

import base64
import gzip
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

from tests.conftest import RunsOnUnpickle, image_batch, local_net, training_state
from tests.server import LiveServer, start_test_server

pytestmark = [pytest.mark.server]

JSON = {"content-type": "application/json"}
IMAGE = image_batch(1)[0, 0].tolist()
MAX_BODY_BYTES = 1024 * 1024
# Finite float32 pixels whose logits overflow float32 inside the network.
OVERFLOWING = np.where(image_batch(1) > 0, 3.4e38, -3.4e38).astype(np.float32)
MODEL_WEIGHTS = {name: p.detach().clone() for name, p in local_net(3).named_parameters()}


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


def _battery(marker: Path) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(method, path, the status the contract names, httpx keyword arguments) for every bad
    request: 415 a body not declared as the route's type, 400 malformed JSON, 422 content that
    is wrong, 404 an unknown name or id, 405 a method the path does not take; on /v2, 400 for
    every bad input and 404 for an unknown model."""
    good = save_safetensors(MODEL_WEIGHTS)
    torch_pickle = io.BytesIO()
    torch.save(dict(MODEL_WEIGHTS), torch_pickle)
    evil = pickle.dumps({"conv1.weight": RunsOnUnpickle(marker)})
    header_len = struct.unpack("<Q", good[:8])[0]
    items: list[tuple[str, str, int, dict[str, Any]]] = []

    def add(method: str, path: str, status: int, **kwargs: Any) -> None:
        items.append((method, path, status, kwargs))

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
        add("POST", "/predict", 422, json={"inputs": inputs})
    # -- /predict: pixel types and values
    for bad in ("0.5", True, False, None, [0.5], {}, 1e39, -1e39):
        image = [row[:] for row in IMAGE]
        image[5][7] = bad
        add("POST", "/predict", 422, json={"inputs": image})
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1e309", b"nan", b"inf"):
        add("POST", "/predict", 400, **_raw(b'{"inputs": [[' + literal + b", 0.0], [0.0, 0.0]]}"))
    # -- /predict: the body itself
    for text in (b"", b"{", b"\xff\xfe", b'{"inputs": [[0.0]]}x'):  # not JSON
        add("POST", "/predict", 400, **_raw(text))
    for text in (b"[]", b"null", b"3", b'"inputs"'):  # JSON, but not an object
        add("POST", "/predict", 422, **_raw(text))
    add("POST", "/predict", 422, json={"inputs": IMAGE, "tensor": _b64([32, 32])})
    add("POST", "/predict", 422, json={})
    add("POST", "/predict", 422, json={"input": IMAGE})
    add("POST", "/predict", 422, json={"inputs": IMAGE, "invert": True})
    # Finite pixels whose logits overflow float32 inside the network.
    add("POST", "/predict", 422, json={"inputs": OVERFLOWING[0, 0].tolist()})
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
        add("POST", "/predict", 422, json={"tensor": tensor})
    # -- content types (415)
    body = orjson.dumps({"inputs": IMAGE})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        add("POST", "/predict", 415, content=body, headers={"content-type": content_type})
        add("POST", "/train-step", 415, content=body, headers={"content-type": content_type})
    add("POST", "/predict", 415, content=body)  # no content type at all
    add("POST", "/predict", 415, files={"inputs": ("x.json", body, "application/json")})
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
        add("POST", "/train-step", 422, json={"inputs": IMAGE, "targets": targets})
    add("POST", "/train-step", 422, json={"inputs": IMAGE})
    for lr in (0, -1, 1e30, 10.5, "0.1", "NaN", True, [0.1], {}):
        add("POST", "/train-step", 422, json={"inputs": IMAGE, "targets": [3], "lr": lr})
    for literal in (b"NaN", b"Infinity", b"1e309"):
        add(
            "POST",
            "/train-step",
            400,
            **_raw(b'{"inputs": [[0.0]], "targets": [3], "lr": ' + literal + b"}"),
        )
    for loss in ("hinge", "", 1, None, "MSE"):
        if loss is None:
            continue
        add("POST", "/train-step", 422, json={"inputs": IMAGE, "targets": [3], "loss": loss})
    add("POST", "/train-step", 422, json={"inputs": IMAGE, "targets": [3], "loss": "mse"})
    add("POST", "/train-step", 422, json={"inputs": IMAGE, "targets": [3], "epochs": 2})
    both = {"tensor": _b64([1, 32, 32]), "inputs": IMAGE, "targets": [3]}
    add("POST", "/train-step", 422, json=both)
    add("POST", "/train-step", 422, json={"targets": [3]})
    for flag in ("yes", 1, None, [True]):
        add("POST", "/loss", 422, json={"inputs": IMAGE, "targets": [3], "backward": flag})
        add("POST", "/loss", 422, json={"inputs": IMAGE, "targets": [3], "graph": flag})
    add("POST", "/loss", 422, json={"inputs": IMAGE, "targets": [11], "backward": True})
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
    ):
        add("PUT", "/optimizer", 422, json=config)
    add("PUT", "/optimizer", 422, **_raw(b"null"))
    add("PUT", "/optimizer", 415)  # no body, so no content type
    add("PUT", "/optimizer", 400, **_raw(b'{"name": "sgd", "lr": NaN}'))
    add(
        "PUT", "/optimizer", 415, content=b'{"name": "sgd"}', headers={"content-type": "text/plain"}
    )
    for reset in ({"seed": -1}, {"seed": "1"}, {"seed": 1.5}, {"seed": 2**64}, {"seeds": 1}, [1]):
        add("POST", "/reset", 422, json=reset)
    add("POST", "/reset", 400, content=b"{", headers=JSON)
    add("POST", "/reset", 400, **_raw(b'{"seed": NaN}'))
    add("POST", "/reset", 400, **_raw(b'{"seed": Infinity}'))
    add("POST", "/reset", 415, content=b'{"seed": 1}', headers={"content-type": "text/plain"})
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
        add("PUT", "/params/import", 422, content=payload)
    add("POST", "/params/import", 405, content=good)  # wrong method
    # -- checkpoints, params, model
    for checkpoint_id in ("nope", "..", "%2e%2e", "..%2F..%2Fetc", ".tmp-x", " ", "a" * 300):
        add("POST", f"/checkpoints/{checkpoint_id}/restore", 404)
    add("GET", "/params", 404, params={"name": "conv9.weight"})
    add("GET", "/params", 404, params={"name": ["conv1.weight", "../etc"]})
    add("GET", "/params", 422, params={"values": "maybe"})
    add("DELETE", "/params", 405)
    add("PUT", "/predict", 405, json={"inputs": IMAGE})
    # -- /predict/image
    image = "/predict/image"
    add("POST", image, 422, files={"files": ("a.png", b"not an image", "image/png")})
    add("POST", image, 422, files={"files": ("a.png", _png()[:40], "image/png")})
    add("POST", image, 422, files={"files": ("a.png", _png((300, 4)), "image/png")})
    add("POST", image, 422, files={"other": ("a.png", _png(), "image/png")})
    add("POST", image, 415, json={"files": []})
    add("POST", image, 415, content=_png(), headers={"content-type": "image/png"})
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
        add("POST", infer, 400, json=request)
    add("POST", infer, 400, **_raw(b'{"inputs": [{"name": "input", "data": [NaN]}]}'))
    overflowing = OVERFLOWING.ravel().tolist()
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": overflowing}
    add("POST", infer, 400, json={"inputs": [tensor]})  # finite, but the logits overflow
    add("POST", "/v2/models/resnet/infer", 404, json={"inputs": []})
    # -- a body over the limit once inflated (LENET_MAX_BODY_BYTES is 1 MiB here)
    bomb = gzip.compress(b"0" * (MAX_BODY_BYTES + 1))
    add("POST", infer, 413, content=bomb, headers={**JSON, "content-encoding": "gzip"})
    return items


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server with seeded weights and one training step behind it."""
    root = tmp_path_factory.mktemp("bad-inputs")
    live = start_test_server(root, log_level="warning", max_body_bytes=MAX_BODY_BYTES)
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
        for method, path, status, kwargs in battery:
            response = client.request(method, path, **kwargs)
            key = "error" if path.startswith("/v2") else "detail"
            try:
                body = response.json()
                ok = response.status_code == status and isinstance(body, dict) and key in body
                ok = ok and (set(body) == {key} if key == "error" else True)
                ok = ok and (isinstance(body[key], str) or status == 422)
            except ValueError:
                ok = False
            if not ok:
                sent = str(kwargs)[:160]
                failures.append(
                    f"{method} {path} {sent} -> {response.status_code}, not {status}: "
                    f"{response.text[:200]}"
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
