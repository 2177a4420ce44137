"""Triton's extensions over REST (model configuration, statistics, repository index) through the
official tritonclient.http against a real server; errors in the protocol's `{"error"}` shape."""

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import SEED, TEST_DEVICE, image_batch
from tests.server import LiveServer, start_test_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server; the statistics tests read differences, so the order of tests is free."""
    live = start_test_server(tmp_path_factory.mktemp("triton"), seed=SEED, device=TEST_DEVICE)
    yield live
    live.stop()


@pytest.fixture
def client(server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def current_version(server: LiveServer) -> int:
    with server.client() as http:
        version: int = http.get("/model").json()["version"]
    return version


def v2_infer(client: triton.InferenceServerClient, images: np.ndarray) -> np.ndarray:
    tensor = triton.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=True)
    logits: np.ndarray = client.infer("lenet", [tensor]).as_numpy("logits")
    return logits


@pytest.mark.server
def test_server_metadata_declares_the_extensions(client: triton.InferenceServerClient) -> None:
    extensions = client.get_server_metadata()["extensions"]
    assert {"binary_tensor_data", "model_configuration", "statistics", "model_repository"} <= set(
        extensions
    )


@pytest.mark.server
def test_model_config(server: LiveServer, client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("lenet")
    assert config == {
        "name": "lenet",
        "platform": "pytorch",
        "max_batch_size": 1024,  # LENET_MAX_BATCH_SIZE's default
        "input": [
            {
                "name": "input",
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NCHW",
                "dims": [1, 32, 32],
            }
        ],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 1000},  # LENET_BATCH_MAX_WAIT_MS
    }
    version = str(current_version(server))
    assert client.get_model_config("lenet", model_version=version) == config


@pytest.mark.server
def test_unknown_model_or_version_is_404_with_error(
    server: LiveServer, client: triton.InferenceServerClient
) -> None:
    for call in (
        lambda: client.get_model_config("resnet"),
        lambda: client.get_inference_statistics("resnet"),
    ):
        with pytest.raises(InferenceServerException, match="unknown model 'resnet'") as refused:
            call()
        assert refused.value.status() == "404"
    with pytest.raises(InferenceServerException, match="version '999999' of model") as refused:
        client.get_model_config("lenet", model_version="999999")
    assert refused.value.status() == "404"
    with server.client() as http:
        for path in ("/v2/models/resnet/config", "/v2/models/resnet/stats"):
            answer = http.get(path)
            assert answer.status_code == 404
            assert answer.json() == {"error": "unknown model 'resnet'; this server serves 'lenet'"}
        stale = http.get("/v2/models/lenet/versions/999999/stats")
        assert stale.status_code == 404 and set(stale.json()) == {"error"}


def lenet_stats(client: triton.InferenceServerClient, **kwargs: Any) -> dict[str, Any]:
    answer = client.get_inference_statistics("lenet", **kwargs)
    (stats,) = answer["model_stats"]
    assert stats["name"] == "lenet"
    return stats  # type: ignore[no-any-return]


@pytest.mark.server
def test_statistics_count_every_prediction(
    server: LiveServer, client: triton.InferenceServerClient
) -> None:
    before = lenet_stats(client)
    v2_infer(client, image_batch(1, seed=1))
    v2_infer(client, image_batch(2, seed=2))
    with server.client() as http:  # /predict counts among executions, not among v2 requests
        assert http.post("/predict", json={"inputs": image_batch(3)[:, 0].tolist()}).is_success
        bad = http.post(
            "/v2/models/lenet/infer",
            json={
                "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 0]}]
            },
        )
        assert bad.status_code == 400  # a fail of the model
        unknown = http.post("/v2/models/resnet/infer", json={"inputs": []})
        assert unknown.status_code == 404  # never reached the model: neither success nor fail
    after = lenet_stats(client)

    def moved(*keys: str) -> int:
        value_after, value_before = after, before
        for key in keys:
            value_after, value_before = value_after[key], value_before[key]
        return int(value_after) - int(value_before)

    # One request at a time: each is one forward pass.
    assert moved("execution_count") == 3
    assert moved("inference_count") == 1 + 2 + 3
    stats = ("inference_stats",)
    assert moved(*stats, "success", "count") == 2
    assert moved(*stats, "fail", "count") == 1
    assert moved(*stats, "queue", "count") == 3
    assert moved(*stats, "compute_infer", "count") == 3
    for kind in ("success", "fail", "compute_infer"):
        assert moved(*stats, kind, "ns") > 0, kind
    assert moved(*stats, "queue", "ns") >= 0
    assert after["last_inference"] > before["last_inference"]  # ms since the epoch
    sizes = {batch["batch_size"]: batch for batch in after["batch_stats"]}
    assert {1, 2, 3} <= set(sizes)
    assert all(batch["compute_infer"]["ns"] > 0 for batch in sizes.values())
    assert after["version"] == str(current_version(server))
    # Every model, and the current version by number, say the same.
    everything = client.get_inference_statistics()["model_stats"]
    assert [entry["name"] for entry in everything] == ["lenet"]
    assert everything[0]["execution_count"] == after["execution_count"]
    pinned = lenet_stats(client, model_version=after["version"])
    assert pinned["execution_count"] == after["execution_count"]


@pytest.mark.server
def test_repository_index(server: LiveServer, client: triton.InferenceServerClient) -> None:
    version = str(current_version(server))
    expected = [{"name": "lenet", "version": version, "state": "READY"}]
    assert client.get_model_repository_index() == expected
    with server.client() as http:
        assert http.post("/v2/repository/index", json={"ready": True}).json() == expected
        for body in (b"[", b'{"ready": 1}', b'{"other": true}'):
            refused = http.post(
                "/v2/repository/index", content=body, headers={"Content-Type": "application/json"}
            )
            assert refused.status_code == 400, body
            assert set(refused.json()) == {"error"}
