"""The Open Inference Protocol (KServe v2): the official tritonclient against a real server, and
the protocol's error shapes in process."""

import base64
import gzip
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from app.main import create_app
from app.settings import Settings
from tests.conftest import SEED, TEST_DEVICE, image_batch
from tests.server import LiveServer, start_test_server

INFER = "/v2/models/lenet/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server for the module's client tests (they do not change the model)."""
    root: Path = tmp_path_factory.mktemp("v2")
    live = start_test_server(root, seed=SEED, device=TEST_DEVICE)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One in-process app for the module's protocol tests (none of them changes the model)."""
    settings = Settings(
        device=TEST_DEVICE,
        seed=SEED,
        checkpoint_dir=tmp_path_factory.mktemp("v2-app") / "checkpoints",
        autosave_on_shutdown=False,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def triton_client(server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def predict_logits(server: LiveServer, images: np.ndarray) -> tuple[np.ndarray, int]:
    """Logits and version from POST /predict, sent as the base64 `tensor` form."""
    tensor = {
        "shape": list(images.shape),
        "dtype": "float32",
        "data": base64.b64encode(images.astype("<f4").tobytes()).decode(),
    }
    with server.client() as http:
        response = http.post("/predict", json={"tensor": tensor})
    assert response.status_code == 200, response.text
    body = response.json()
    return np.asarray(body["outputs"], dtype=np.float32), body["version"]


def infer(
    client: triton.InferenceServerClient,
    images: np.ndarray,
    binary_input: bool,
    binary_output: bool | None,
    **kwargs: object,
) -> triton.InferResult:
    tensor = triton.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary_input)
    outputs = None
    if binary_output is not None:
        outputs = [triton.InferRequestedOutput("logits", binary_data=binary_output)]
    return client.infer("lenet", [tensor], outputs=outputs, **kwargs)


# ------------------------------------------------------------------ tritonclient, real server


@pytest.mark.server
def test_health_and_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("lenet")
    assert not triton_client.is_model_ready("resnet")
    server = triton_client.get_server_metadata()
    assert server["name"] == "lenet-serve"
    assert "binary_tensor_data" in server["extensions"]
    model = triton_client.get_model_metadata("lenet")
    assert model["name"] == "lenet"
    assert model["versions"] == ["0"]
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 32, 32]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert triton_client.get_model_metadata("lenet", model_version="0")["name"] == "lenet"


@pytest.mark.server
@pytest.mark.parametrize(
    ("binary_input", "binary_output"),
    [(True, True), (False, False), (True, False), (False, True), (True, None)],
    ids=["binary", "json", "binary-in-json-out", "json-in-binary-out", "default-outputs"],
)
def test_infer_matches_predict(
    server: LiveServer,
    triton_client: triton.InferenceServerClient,
    binary_input: bool,
    binary_output: bool | None,
) -> None:
    images = image_batch(5, seed=7)
    expected, version = predict_logits(server, images)
    result = infer(triton_client, images, binary_input, binary_output, request_id="req-1")
    logits = result.as_numpy("logits")
    assert logits.dtype == np.float32
    assert logits.shape == (5, 10)
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
    response = result.get_response()
    assert response["model_name"] == "lenet"
    assert response["model_version"] == str(version)
    assert response["id"] == "req-1"
    # Binary outputs carry a size and no `data`; JSON outputs the reverse.
    output = response["outputs"][0]
    assert ("data" in output) is (binary_output is False)


@pytest.mark.server
def test_infer_compressed_request_and_pinned_version(
    server: LiveServer, triton_client: triton.InferenceServerClient
) -> None:
    images = image_batch(2, seed=8)
    expected, version = predict_logits(server, images)
    for algorithm in ("gzip", "deflate"):
        result = infer(
            triton_client,
            images,
            True,
            True,
            model_version=str(version),
            request_compression_algorithm=algorithm,
        )
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5, rtol=0)


@pytest.mark.server
def test_client_errors(triton_client: triton.InferenceServerClient) -> None:
    images = image_batch(1)
    tensor = triton.InferInput("input", [1, 1, 32, 32], "FP32")
    tensor.set_data_from_numpy(images)
    with pytest.raises(InferenceServerException) as unknown:
        triton_client.infer("resnet", [tensor])
    assert unknown.value.status() == "404"
    assert "unknown model 'resnet'" in unknown.value.message()
    with pytest.raises(InferenceServerException) as stale:
        triton_client.infer("lenet", [tensor], model_version="99")
    assert stale.value.status() == "404"
    wrong = triton.InferInput("input", [1, 1, 28, 28], "FP32")
    wrong.set_data_from_numpy(image_batch(1, side=28))
    with pytest.raises(InferenceServerException) as shape:
        triton_client.infer("lenet", [wrong])
    assert shape.value.status() == "400"
    assert "[N, 1, 32, 32]" in shape.value.message()


# ------------------------------------------------------------------ protocol details, in process


def infer_body(images: np.ndarray, **overrides: object) -> dict[str, object]:
    tensor: dict[str, object] = {
        "name": "input",
        "shape": list(images.shape),
        "datatype": "FP32",
        "data": images.ravel().tolist(),
    }
    tensor.update(overrides)
    return {"inputs": [tensor]}


def binary_request(header: dict[str, object], raw: bytes) -> tuple[bytes, dict[str, str]]:
    json_part = orjson.dumps(header)
    return json_part + raw, {"Inference-Header-Content-Length": str(len(json_part))}


def test_nested_and_flat_data_agree(client: TestClient) -> None:
    images = image_batch(2, seed=3)
    flat = client.post(INFER, json=infer_body(images))
    nested = client.post(INFER, json=infer_body(images, data=images.tolist()))
    assert flat.status_code == nested.status_code == 200, (flat.text, nested.text)
    assert flat.headers["content-type"] == "application/json"
    assert flat.json()["outputs"] == nested.json()["outputs"]
    assert flat.json()["parameters"] == {"step": 0}


def test_binary_answer_layout(client: TestClient) -> None:
    images = image_batch(3, seed=4)
    header = infer_body(images, parameters={"binary_data_size": images.nbytes})
    del header["inputs"][0]["data"]  # type: ignore[index]
    header["outputs"] = [{"name": "logits", "parameters": {"binary_data": True}}]
    body, headers = binary_request(header, images.astype("<f4").tobytes())
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    answer = orjson.loads(response.content[:length])
    output = answer["outputs"][0]
    assert output["shape"] == [3, 10]
    assert output["parameters"] == {"binary_data_size": 3 * 10 * 4}
    logits = np.frombuffer(response.content[length:], dtype="<f4").reshape(3, 10)
    json_answer = client.post(INFER, json=infer_body(images)).json()
    np.testing.assert_array_equal(
        logits, np.asarray(json_answer["outputs"][0]["data"], dtype=np.float32).reshape(3, 10)
    )


def error_of(response: object) -> str:
    assert response.headers["content-type"] == "application/json"  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and isinstance(body["error"], str)
    message: str = body["error"]
    return message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"datatype": "INT32"}, "datatype must be FP32"),
        ({"datatype": "FP64"}, "datatype must be FP32"),
        ({"shape": [1, 32, 32]}, "[N, 1, 32, 32]"),
        ({"shape": [1, 1, 28, 28]}, "[N, 1, 32, 32]"),
        ({"shape": [0, 1, 32, 32]}, "N >= 1"),
        ({"shape": [1, 1, 32, "32"]}, "array of integers"),
        ({"name": "image"}, "unknown input 'image'"),
        ({"data": [0.5] * 10}, "needs 1024 values"),
        ({"data": ["0.5"] * 1024}, "only numbers"),
        ({"data": [True] * 1024}, "only numbers"),
        ({"data": [1e39] * 1024}, "finite"),
        ({"data": None}, "must be an array"),
        ({"parameters": {"binary_data_size": 4096}}, "both 'data' and a binary_data_size"),
        ({"extra": 1}, "unknown field(s) in an input"),
    ],
)
def test_bad_input_is_400(client: TestClient, overrides: dict[str, object], message: str) -> None:
    response = client.post(INFER, json=infer_body(image_batch(1), **overrides))
    assert response.status_code == 400
    assert message in error_of(response)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b"{}", "exactly one tensor"),
        (b'{"inputs": [], "id": "x"}', "exactly one tensor"),
        (b'{"input": []}', "unknown field(s)"),
        (b'{"inputs": [{}], "id": 3}', "id must be a string"),
        (b"NaN", "not valid JSON"),
    ],
)
def test_malformed_request_is_400(client: TestClient, body: bytes, message: str) -> None:
    response = client.post(INFER, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert message in error_of(response)


def test_bad_outputs_are_400(client: TestClient) -> None:
    body = infer_body(image_batch(1))
    body["outputs"] = [{"name": "probabilities"}]
    assert "unknown output" in error_of(client.post(INFER, json=body))
    body["outputs"] = [{"name": "logits", "parameters": {"classification": 3}}]
    assert "classification" in error_of(client.post(INFER, json=body))
    body["outputs"] = [{"name": "logits", "parameters": {"binary_data": "yes"}}]
    assert "true or false" in error_of(client.post(INFER, json=body))


def test_binary_framing_errors_are_400(client: TestClient) -> None:
    images = image_batch(1)
    raw = images.astype("<f4").tobytes()
    header = infer_body(images, parameters={"binary_data_size": len(raw)})
    del header["inputs"][0]["data"]  # type: ignore[index]
    body, headers = binary_request(header, raw)
    cases = [
        (body[:-4], headers, "only 4092 bytes follow"),
        (body + b"\0\0\0\0", headers, "4 bytes after the JSON"),
        (body, {"Inference-Header-Content-Length": str(len(body) + 1)}, "the body has only"),
        (body, {"Inference-Header-Content-Length": "-1"}, "non-negative integer"),
    ]
    for content, hdrs, message in cases:
        response = client.post(INFER, content=content, headers=hdrs)
        assert response.status_code == 400, message
        assert message in error_of(response)
    nan = struct.pack("<f", float("nan")) + raw[4:]
    response = client.post(INFER, content=binary_request(header, nan)[0], headers=headers)
    assert response.status_code == 400
    assert "finite" in error_of(response)
    header["inputs"][0]["parameters"] = {"binary_data_size": 12}  # type: ignore[index]
    content, headers = binary_request(header, raw)
    response = client.post(INFER, content=content, headers=headers)
    assert "binary_data_size must be 4096" in error_of(response)


def test_limits_and_encodings(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_batch_size=2, max_body_bytes=64 * 1024)
    response = client.post(INFER, json=infer_body(image_batch(3)))
    assert response.status_code == 400
    assert "LENET_MAX_BATCH_SIZE" in error_of(response)
    # A gzip bomb: 1 MiB of zeros in a kilobyte is refused once it passes the body limit.
    bomb = gzip.compress(b"0" * (1024 * 1024))
    response = client.post(INFER, content=bomb, headers={"content-encoding": "gzip"})
    assert response.status_code == 413
    assert "LENET_MAX_BODY_BYTES" in error_of(response)
    response = client.post(INFER, content=b"{}", headers={"content-encoding": "br"})
    assert response.status_code == 415
    assert "Content-Encoding" in error_of(response)
    response = client.post(INFER, content=b"not gzip", headers={"content-encoding": "gzip"})
    assert response.status_code == 400


def test_unknown_model_and_version_are_404(client: TestClient) -> None:
    body = infer_body(image_batch(1))
    for path in ("/v2/models/resnet/infer", "/v2/models/lenet/versions/5/infer"):
        response = client.post(path, json=body)
        assert response.status_code == 404
        assert "not available" in error_of(response) or "unknown model" in error_of(response)
    for path in ("/v2/models/resnet", "/v2/models/resnet/ready", "/v2/models/lenet/versions/1"):
        assert client.get(path).status_code == 404
    assert client.post("/v2/models/lenet/versions/0/infer", json=body).status_code == 200
    assert client.get("/v2/models/lenet/versions/0/ready").json() == {
        "name": "lenet",
        "ready": True,
    }
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_an_input_that_overflows_the_network_is_400(client: TestClient) -> None:
    # Finite FP32 pixels whose logits overflow: bad input, which the protocol answers with 400
    # (POST /predict answers the same input with 422).
    signs = np.random.default_rng(1).standard_normal((1, 1, 32, 32)) > 0
    images = np.where(signs, 3.4e38, -3.4e38).astype(np.float32)
    for body, headers in (
        (orjson.dumps(infer_body(images)), {"content-type": "application/json"}),
        binary_request(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 32, 32],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": images.nbytes},
                    }
                ]
            },
            images.astype("<f4").tobytes(),
        ),
    ):
        response = client.post(INFER, content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert "not finite" in error_of(response)
    assert client.post(INFER, json=infer_body(image_batch(1))).status_code == 200
