"""app.routes.predict: POST /predict, in process: strict finite JSON numbers, the two image
forms, the limits, and an input that overflows the network.
"""

import base64
import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from tests.conftest import (
    image_batch,
    snapshot,
    tensor_field,
    version_step,
)

ClientFactory = Callable[..., TestClient]


ONE_IMAGE = image_batch(1)[0, 0].tolist()


def _image_with(value: Any) -> list[list[Any]]:
    image: list[list[Any]] = [row[:] for row in ONE_IMAGE]
    image[3][4] = value
    return image


GOOD_TENSOR = {
    "shape": [1, 1, 32, 32],
    "dtype": "float32",
    "data": base64.b64encode(image_batch(1).tobytes()).decode(),
}

PREDICT_CASES: list[tuple[str, Any, int, str]] = [
    # (id, body, status, words the message must contain)
    ("rank1", {"inputs": [1.0, 2.0]}, 422, "rank"),
    ("rank5", {"inputs": [[[[[1.0]]]]]}, 422, "dimensions"),
    ("two-channels", {"inputs": [[ONE_IMAGE, ONE_IMAGE]]}, 422, "channel"),
    ("ragged", {"inputs": [[1.0, 2.0], [3.0]]}, 422, "ragged"),
    ("empty", {"inputs": []}, 422, "empty"),
    ("string-pixel", {"inputs": [["1.0", 2.0], [3.0, 4.0]]}, 422, "string"),
    ("bool-pixel", {"inputs": [[True, 2.0], [3.0, 4.0]]}, 422, "boolean"),
    ("null-pixel", {"inputs": [[None, 2.0], [3.0, 4.0]]}, 422, "null"),
    ("float32-overflow", {"inputs": [[1e39, 2.0], [3.0, 4.0]]}, 422, "finite"),
    ("both", {"inputs": ONE_IMAGE, "tensor": GOOD_TENSOR}, 422, "not both"),
    ("neither", {}, 422, "neither"),
    ("unknown-field", {"input": ONE_IMAGE}, 422, "unknown field"),
    ("b64-length", {"tensor": {**GOOD_TENSOR, "shape": [2, 1, 32, 32]}}, 422, "shape"),
    ("b64-garbage", {"tensor": {**GOOD_TENSOR, "data": "!!!!" * 1024}}, 422, "base64"),
    ("b64-dtype", {"tensor": {**GOOD_TENSOR, "dtype": "float64"}}, 422, "dtype"),
]


@pytest.mark.parametrize(
    ("body", "status", "words"), [c[1:] for c in PREDICT_CASES], ids=[c[0] for c in PREDICT_CASES]
)
def test_bad_images_are_422_naming_the_problem_and_change_nothing(
    client: Any, body: Any, status: int, words: str
) -> None:
    before = snapshot(client)
    answer = client.post("/predict", json=body)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert words in str(detail), detail
    assert snapshot(client) == before


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"inputs": _image_with("0.5")}, 422),
        ({"inputs": _image_with(True)}, 422),
        ({"inputs": _image_with(None)}, 422),
        ({"inputs": _image_with([0.5])}, 422),
        ({"inputs": _image_with({"v": 1})}, 422),
        ({"inputs": _image_with(1e39)}, 422),
        ({"inputs": _image_with(-1e39)}, 422),
        ({"inputs": "[[0.0]]"}, 422),
        ({"tensor": {**tensor_field([32, 32]), "dtype": "float64"}}, 422),
        ({"tensor": tensor_field([1, 32, 32], fill=math.inf)}, 422),
        ({"tensor": tensor_field([1, 32, 32], fill=math.nan)}, 422),
    ],
)
def test_pixels_are_finite_json_numbers_only(
    client: TestClient, body: dict[str, Any], status: int
) -> None:
    for route, extra in (("/predict", {}), ("/train-step", {"targets": [1]})):
        response = client.post(route, json={**body, **extra})
        assert response.status_code == status, (route, response.text)
        assert isinstance(response.json()["detail"], str)
    assert version_step(client) == (0, 0)


def test_a_finite_pixel_at_the_float32_edge_is_accepted(client: TestClient) -> None:
    response = client.post("/predict", json={"inputs": _image_with(3.4e38)})
    assert response.status_code == 200


def test_integers_are_numbers_for_pixels(client: Any) -> None:
    answer = client.post("/predict", json={"inputs": [[0, 1], [1, 0]]})
    assert answer.status_code == 200, answer.text


def test_an_input_that_overflows_the_network_is_refused_not_answered_with_nulls(
    client: TestClient,
) -> None:
    # Finite float32 pixels whose logits overflow: the answer must never hold NaN (null) scores.
    signs = np.random.default_rng(1).standard_normal((32, 32)) > 0
    image = np.where(signs, 3.4e38, -3.4e38).astype(np.float32).tolist()
    response = client.post("/predict", json={"inputs": image})
    assert response.status_code == 422, response.text
    assert "finite" in response.json()["detail"]
    assert client.post("/predict", json={"inputs": ONE_IMAGE}).status_code == 200


def test_json_with_a_charset_parameter_is_json(client: TestClient) -> None:
    response = client.post(
        "/predict",
        content=orjson.dumps({"inputs": ONE_IMAGE}),
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert response.status_code == 200


# ----------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("shape", "names"),
    [
        ([1025, 1, 1], ("1024", "LENET_MAX_BATCH_SIZE")),
        ([1025, 1, 1, 1], ("1024", "LENET_MAX_BATCH_SIZE")),
        ([1, 257, 1], ("256", "LENET_MAX_IMAGE_SIDE")),
        ([1, 257], ("256", "LENET_MAX_IMAGE_SIDE")),
    ],
)
def test_default_batch_and_side_limits_are_422_naming_the_limit(
    client: TestClient, shape: list[int], names: tuple[str, ...]
) -> None:
    for field, value in (("tensor", tensor_field(shape)), ("inputs", np.zeros(shape).tolist())):
        response = client.post("/predict", json={field: value})
        assert response.status_code == 422, (field, response.text)
        assert all(name in response.json()["detail"] for name in names), response.text
    at_limit = [min(d, 1024 if i == 0 and len(shape) > 2 else 256) for i, d in enumerate(shape)]
    assert client.post("/predict", json={"tensor": tensor_field(at_limit)}).status_code == 200


def _targets(route: str, n: int) -> dict[str, Any]:
    return {} if route == "/predict" else {"targets": list(range(n))}


def test_configured_limits_apply_to_every_route(make_client: ClientFactory) -> None:
    small = make_client(max_batch_size=2, max_image_side=40, max_body_bytes=4096)
    for route in ("/predict", "/train-step", "/loss"):
        answer = small.post(
            route, json={"inputs": np.zeros((3, 8, 8)).tolist(), **_targets(route, 3)}
        )
        assert answer.status_code == 422 and "2 (LENET_MAX_BATCH_SIZE)" in answer.json()["detail"]
        wide = small.post(route, json={"tensor": tensor_field([1, 41, 8]), **_targets(route, 1)})
        assert wide.status_code == 422 and "40 (LENET_MAX_IMAGE_SIDE)" in wide.json()["detail"]
        big = small.post(
            route, json={"inputs": np.zeros((2, 40, 40)).tolist(), **_targets(route, 2)}
        )
        assert big.status_code == 413 and "4096" in big.json()["detail"], big.text
        assert "LENET_MAX_BODY_BYTES" in big.json()["detail"]
    upload = io.BytesIO(b"\0" * 5000)
    assert small.put("/params/import", content=upload.getvalue()).status_code == 413
    assert version_step(small) == (0, 0)
