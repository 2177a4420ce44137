"""Versions you can name: GET /versions, `version` (pinned to exactly one resident version) and
`min_version` (read-your-writes) on /predict, /predict/image, /explain and the v2 routes, in
process and over a real server while training runs. Every pinned answer is checked against a
local forward with that version's weights, as GET /params/export gave them after its step."""

import asyncio
import io
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load

from app import inspection
from models.lenet import Net
from tests.conftest import image_batch
from tests.server import start_test_server

TRAIN = {"inputs": image_batch(8, seed=3)[:, 0].tolist(), "targets": [1, 2, 3, 4, 5, 6, 7, 8]}
IMAGES = image_batch(3, seed=5)


def exported(client: Any) -> tuple[int, dict[str, torch.Tensor]]:
    """The served weights and the version they are (from the export's own metadata)."""
    response = client.get("/params/export")
    assert response.status_code == 200, response.text
    header_length = int.from_bytes(response.content[:8], "little")
    version = int(orjson.loads(response.content[8 : 8 + header_length])["__metadata__"]["version"])
    return version, load(response.content)


def local_logits(weights: dict[str, torch.Tensor], images: np.ndarray) -> np.ndarray:
    """A local forward of `images` with `weights`: what a pinned answer must equal."""
    net = Net()
    net.load_state_dict(weights)
    with torch.inference_mode():
        return net(torch.from_numpy(images)).numpy()


def train(client: Any, steps: int) -> dict[int, dict[str, torch.Tensor]]:
    """Take `steps` steps; each version's weights, exported right after its step."""
    kept = {}
    for _ in range(steps):
        response = client.post("/train-step", json=TRAIN)
        assert response.status_code == 200, response.text
        version, weights = exported(client)
        assert version == response.json()["version"]
        kept[version] = weights
    return kept


@pytest.fixture
def trained(make_client: Callable[..., TestClient]) -> tuple[TestClient, dict[int, Any]]:
    """A client with keep 4, its start-up weights and five steps taken (versions 0-5)."""
    client = make_client(keep_versions=4)
    version, weights = exported(client)
    kept = {version: weights, **train(client, 5)}
    return client, kept


def test_versions_lists_the_newest_resident_versions_newest_first(
    trained: tuple[TestClient, dict[int, Any]],
) -> None:
    client, kept = trained
    body = client.get("/versions").json()
    assert body["current"] == 5 and "lag_ms" not in body
    assert [entry["version"] for entry in body["versions"]] == [5, 4, 3, 2]
    assert [entry["step"] for entry in body["versions"]] == [5, 4, 3, 2]
    created = [datetime.fromisoformat(entry["created"]) for entry in body["versions"]]
    assert created == sorted(created, reverse=True) and created[0].tzinfo is not None


def test_a_pinned_prediction_is_computed_from_exactly_that_version(
    trained: tuple[TestClient, dict[int, Any]],
) -> None:
    client, kept = trained
    for version in (2, 3, 4, 5):
        expected = local_logits(kept[version], IMAGES)
        body = client.post("/predict", json={"inputs": IMAGES.tolist(), "version": version}).json()
        assert (body["version"], body["step"]) == (version, version)
        np.testing.assert_allclose(body["outputs"], expected, rtol=0, atol=1e-6)
        assert body["predictions"] == expected.argmax(1).tolist()
    # The versions differ, so this proves something: an old version's answer is not the new one.
    assert not np.allclose(local_logits(kept[2], IMAGES), local_logits(kept[5], IMAGES))


def test_pinned_image_upload_explain_and_v2_use_that_version(
    trained: tuple[TestClient, dict[int, Any]],
) -> None:
    client, kept = trained
    pixels = (np.random.default_rng(2).random((32, 32)) * 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    image = (pixels.astype(np.float32) / 255)[None, None]
    upload = client.post(
        "/predict/image", params={"version": 3}, files={"files": ("a.png", png.getvalue())}
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["version"] == 3
    np.testing.assert_allclose(upload.json()["outputs"], local_logits(kept[3], image), atol=1e-6)

    explained = client.post("/explain", json={"inputs": IMAGES[0, 0].tolist(), "version": 2})
    assert explained.status_code == 200, explained.text
    net = Net()
    net.load_state_dict(kept[2])
    expected = inspection.explain(net, torch.from_numpy(IMAGES[:1]), None)
    assert explained.json()["version"] == 2
    np.testing.assert_allclose(explained.json()["outputs"], expected["outputs"], atol=1e-6)
    np.testing.assert_allclose(explained.json()["saliency"], expected["saliency"], atol=1e-6)

    infer = {
        "inputs": [
            {"name": "input", "shape": [3, 1, 32, 32], "datatype": "FP32",
             "data": IMAGES.ravel().tolist()}
        ]
    }  # fmt: skip
    answer = client.post("/v2/models/lenet/versions/4/infer", json=infer)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == "4"
    logits = np.asarray(answer.json()["outputs"][0]["data"]).reshape(3, 10)
    np.testing.assert_allclose(logits, local_logits(kept[4], IMAGES), atol=1e-6)
    metadata = client.get("/v2/models/lenet").json()
    assert metadata["versions"] == ["5", "4", "3", "2"]
    assert client.get("/v2/models/lenet/versions/2").status_code == 200
    gone = client.get("/v2/models/lenet/versions/1")
    assert gone.status_code == 404 and "2 (oldest) to 5 (newest)" in gone.json()["error"]


def test_a_version_that_is_not_resident_is_404_naming_the_range(
    trained: tuple[TestClient, dict[int, Any]],
) -> None:
    client, _ = trained
    for version in (1, 6, 10**12):
        response = client.post("/predict", json={"inputs": IMAGES.tolist(), "version": version})
        assert response.status_code == 404
        assert "2 (oldest) to 5 (newest)" in response.json()["detail"]
    explain = client.post("/explain", json={"inputs": IMAGES[0, 0].tolist(), "version": 0})
    assert explain.status_code == 404 and "2 (oldest)" in explain.json()["detail"]


def test_version_and_min_version_together_are_422(
    trained: tuple[TestClient, dict[int, Any]],
) -> None:
    client, _ = trained
    both = {"version": 5, "min_version": 5}
    response = client.post("/predict", json={"inputs": IMAGES.tolist(), **both})
    assert response.status_code == 422 and "not both" in response.json()["detail"]
    response = client.post("/explain", json={"inputs": IMAGES[0, 0].tolist(), **both})
    assert response.status_code == 422 and "not both" in response.json()["detail"]
    png = io.BytesIO()
    Image.new("L", (28, 28)).save(png, format="PNG")
    upload = client.post("/predict/image", params=both, files={"files": ("a.png", png.getvalue())})
    assert upload.status_code == 422
    for bad in (-1, "3", 2.0, True):
        response = client.post("/predict", json={"inputs": IMAGES.tolist(), "version": bad})
        assert response.status_code == 422, bad


def test_min_version_answers_at_once_when_reached_and_409_past_the_wait(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(min_version_wait_ms=300)
    train(client, 2)
    reached = client.post("/predict", json={"inputs": IMAGES.tolist(), "min_version": 1})
    assert reached.status_code == 200 and reached.json()["version"] == 2
    started = time.monotonic()
    late = client.post("/predict", json={"inputs": IMAGES.tolist(), "min_version": 3})
    waited = time.monotonic() - started
    assert late.status_code == 409
    assert "current version is 2" in late.json()["detail"] and 0.3 <= waited < 5
    explain = client.post("/explain", json={"inputs": IMAGES[0, 0].tolist(), "min_version": 9})
    assert explain.status_code == 409 and "current version is 2" in explain.json()["detail"]


def test_min_version_waits_for_the_step_without_blocking_others(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(min_version_wait_ms=10_000)
    answers: list[Any] = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            client.post("/predict", json={"inputs": IMAGES.tolist(), "min_version": 1})
        )
    )
    waiter.start()
    time.sleep(0.3)
    # While it waits, other predictions and reads are answered at once.
    for _ in range(5):
        assert client.post("/predict", json={"inputs": IMAGES.tolist()}).json()["version"] == 0
    assert waiter.is_alive()
    kept = train(client, 1)
    waiter.join(10)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["version"] == 1
    np.testing.assert_allclose(
        answers[0].json()["outputs"], local_logits(kept[1], IMAGES), atol=1e-6
    )


@pytest.mark.server
def test_pinned_answers_over_a_real_server_while_it_trains(tmp_path: Path) -> None:
    server = start_test_server(tmp_path, keep_versions=16, torch_threads=1)
    kept: dict[int, dict[str, torch.Tensor]] = {}
    done = threading.Event()
    failures: list[str] = []

    def trainer() -> None:
        try:
            with server.client() as http:
                version, weights = exported(http)
                kept[version] = weights
                for _ in range(40):
                    kept.update(train(http, 1))
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            failures.append(repr(error))
        finally:
            done.set()

    thread = threading.Thread(target=trainer)
    thread.start()
    checked = missed = 0
    rng = random.Random(0)
    deadline = time.monotonic() + 120
    try:
        with server.client() as http:
            while (not done.is_set() or checked < 20) and time.monotonic() < deadline:
                if not kept or checked >= 400:
                    time.sleep(0.01)
                    continue
                version = rng.choice(sorted(kept)[-12:])
                images = image_batch(rng.randint(1, 4), seed=rng.randint(0, 99))
                response = http.post(
                    "/predict", json={"inputs": images.tolist(), "version": version}
                )
                if response.status_code == 404:
                    missed += 1  # evicted meanwhile: allowed, and named
                    assert "(oldest)" in response.json()["detail"]
                    continue
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["version"] == version
                np.testing.assert_allclose(
                    body["outputs"], local_logits(kept[version], images), rtol=0, atol=1e-6
                )
                checked += 1
            listed = http.get("/versions").json()
    finally:
        thread.join(60)
        server.stop()
    assert not failures, failures
    assert checked >= 20 and missed < checked, (checked, missed)
    assert listed["current"] == max(kept) and len(listed["versions"]) == 16


def test_concurrent_pinned_requests_for_several_versions_each_get_their_own(
    make_settings: Callable[..., Any],
) -> None:
    """Pinned requests are batched per version: many at once, for two versions and of
    different sizes, each answered from exactly its own version's weights."""
    from app.engine import Engine

    async def scenario() -> list[tuple[int, np.ndarray, Any]]:
        engine = Engine(make_settings(keep_versions=8))
        await engine.start()
        try:
            kept = {}
            images = torch.from_numpy(IMAGES)
            for _ in range(3):
                await engine.train_step(images, torch.arange(3), "cross_entropy", None)
                kept[engine.version] = {
                    name: p.detach().clone() for name, p in engine.model.named_parameters()
                }
            requests = [
                (version, image_batch(1 + n % 4, seed=n)) for n in range(48) for version in (1, 3)
            ]
            answers = await asyncio.gather(
                *(engine.predict(torch.from_numpy(x), version=v) for v, x in requests)
            )
            return [(v, x, (a, kept[v])) for (v, x), a in zip(requests, answers, strict=True)]
        finally:
            await engine.close()

    for version, images, (answer, weights) in asyncio.run(scenario()):
        assert answer.version == version
        np.testing.assert_allclose(answer.logits, local_logits(weights, images), atol=1e-6)
