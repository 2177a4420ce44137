"""Bad input is a clear 4xx in FastAPI's shape that names the problem, and changes nothing."""

import base64
from typing import Any

import numpy as np
import pytest

from tests.conftest import image_batch, snapshot

IMAGE = image_batch(1)[0, 0].tolist()
BATCH2 = image_batch(2).tolist()
GOOD_TENSOR = {
    "shape": [1, 1, 32, 32],
    "dtype": "float32",
    "data": base64.b64encode(image_batch(1).tobytes()).decode(),
}

CASES: list[tuple[str, str, Any, int, str]] = [
    # (id, route, body, status, words the message must contain)
    ("rank1", "/predict", {"inputs": [1.0, 2.0]}, 422, "rank"),
    ("rank5", "/predict", {"inputs": [[[[[1.0]]]]]}, 422, "dimensions"),
    ("two-channels", "/predict", {"inputs": [[IMAGE, IMAGE]]}, 422, "channel"),
    ("ragged", "/predict", {"inputs": [[1.0, 2.0], [3.0]]}, 422, "ragged"),
    ("empty", "/predict", {"inputs": []}, 422, "empty"),
    ("string-pixel", "/predict", {"inputs": [["1.0", 2.0], [3.0, 4.0]]}, 422, "string"),
    ("bool-pixel", "/predict", {"inputs": [[True, 2.0], [3.0, 4.0]]}, 422, "boolean"),
    ("null-pixel", "/predict", {"inputs": [[None, 2.0], [3.0, 4.0]]}, 422, "null"),
    ("float32-overflow", "/predict", {"inputs": [[1e39, 2.0], [3.0, 4.0]]}, 422, "finite"),
    ("both", "/predict", {"inputs": IMAGE, "tensor": GOOD_TENSOR}, 422, "not both"),
    ("neither", "/predict", {}, 422, "neither"),
    ("unknown-field", "/predict", {"input": IMAGE}, 422, "unknown field"),
    ("b64-length", "/predict", {"tensor": {**GOOD_TENSOR, "shape": [2, 1, 32, 32]}}, 422, "shape"),
    ("b64-garbage", "/predict", {"tensor": {**GOOD_TENSOR, "data": "!!!!" * 1024}}, 422, "base64"),
    ("b64-dtype", "/predict", {"tensor": {**GOOD_TENSOR, "dtype": "float64"}}, 422, "dtype"),
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
        (b'{"inputs": ', "application/json", 400),
        (b"[1, 2]", "application/json", 422),
        (b'{"inputs": [[1.0]]}', "text/plain", 415),
        (b'{"inputs": [[1.0]], "targets": [1], "lr": 1e309}', "application/json", 400),
        (b'{"inputs": [[1.0]]}', "", 415),
    ],
    ids=["nan", "infinity", "truncated", "not-object", "text-plain", "lr-1e309", "no-type"],
)
def test_unreadable_bodies(client: Any, content: bytes, content_type: str, status: int) -> None:
    before = snapshot(client)
    headers = {"content-type": content_type} if content_type else {}
    for route in ("/predict", "/train-step"):
        answer = client.post(route, content=content, headers=headers)
        assert answer.status_code == status, answer.text
        assert "detail" in answer.json()
    assert snapshot(client) == before


def test_limits_name_the_setting(make_client: Any) -> None:
    client = make_client(max_batch_size=4, max_image_side=40, max_body_bytes=50_000)
    big_batch = client.post("/predict", json={"inputs": np.zeros((5, 2, 2)).tolist()})
    assert big_batch.status_code == 422
    assert "LENET_MAX_BATCH_SIZE" in big_batch.json()["detail"]
    big_side = client.post("/predict", json={"inputs": np.zeros((41, 41)).tolist()})
    assert big_side.status_code == 422
    assert "LENET_MAX_IMAGE_SIDE" in big_side.json()["detail"]
    big_body = client.post("/predict", json={"inputs": image_batch(4).tolist()})
    assert big_body.status_code == 413
    assert "LENET_MAX_BODY_BYTES" in big_body.json()["detail"]


def test_integers_are_numbers_for_pixels(client: Any) -> None:
    answer = client.post("/predict", json={"inputs": [[0, 1], [1, 0]]})
    assert answer.status_code == 200, answer.text


def test_token_protects_mutations_and_leaves_reads_open(make_client: Any) -> None:
    client = make_client(api_token="s3cret-token")
    before = snapshot(client)
    body = {"inputs": BATCH2, "targets": [1, 2]}
    for headers in ({}, {"Authorization": "Bearer wrong-token!"}, {"Authorization": "Basic abc"}):
        answer = client.post("/train-step", json=body, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
    assert snapshot(client) == before
    assert client.post("/predict", json={"inputs": IMAGE}).status_code == 200
    good = client.post("/train-step", json=body, headers={"Authorization": "Bearer s3cret-token"})
    assert good.status_code == 200
