"""Roles and the version store, in process: a trainer publishes (at start-up, while it changes, at
every checkpoint), a predictor follows (not ready until it holds a version, never back, skips a
version that fails its check), every route that changes anything is 409 on a predictor, and a
trainer on a store continues past every version in it."""

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.main import create_app
from app.settings import Settings
from app.store import LATEST, VersionStore
from app.tensors import save_weights
from models.lenet import build_net
from tests.conftest import image_batch, training_state
from tests.test_guards import guarded_routes
from tests.test_versions_resident import TRAIN, exported, local_logits

IMAGES = image_batch(2, seed=9)


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll `condition` (bounded in time) until it holds, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s")


def publish(store: VersionStore, version: int, weights: dict[str, torch.Tensor]) -> bytes:
    """Publish `weights` as `version` the way a trainer does; returns the file's bytes."""
    data = save_weights(weights, {"version": str(version), "step": str(version)})
    store.publish(version, version, "2026-01-01T00:00:00+00:00", data, time.time())
    return data


def publish_damaged(store: VersionStore, version: int, weights: dict[str, torch.Tensor]) -> None:
    """Publish `version` with its weights damaged after hashing (the last bytes changed), in the
    store's own order (weights, record, pointer), so no reader ever sees it sound."""
    scratch = VersionStore(store.root.parent / f"scratch-{version}")
    data = publish(scratch, version, weights)
    name = f"{version:020d}"
    store.versions_dir.mkdir(parents=True, exist_ok=True)
    (store.versions_dir / f"{name}.safetensors").write_bytes(data[:-4] + b"\x00\x00\xc0\x7f")
    (store.versions_dir / f"{name}.json").write_bytes(
        (scratch.versions_dir / f"{name}.json").read_bytes()
    )
    store.latest_path.write_bytes(scratch.latest_path.read_bytes())


def latest_version(store: VersionStore) -> int:
    """The version `latest.json` names, -1 before the first publication."""
    record = store.read_latest()
    return -1 if record is None else record.version


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return (tmp_path / "store").as_uri()


def test_roles_need_a_file_store(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs store_url"):
        Settings(role="predictor")
    with pytest.raises(ValidationError, match="not supported"):
        Settings(role="trainer", store_url="s3://bucket/prefix")
    settings = Settings(role="predictor", store_url=(tmp_path / "a b").as_uri())
    assert settings.store_path == tmp_path / "a b"


def test_a_trainer_publishes_at_start_up_on_change_and_at_checkpoints(
    make_client: Callable[..., TestClient], store_url: str, tmp_path: Path
) -> None:
    store = VersionStore(tmp_path / "store")
    trainer = make_client(role="trainer", store_url=store_url, publish_interval_ms=60_000)
    wait_until(lambda: store.read_latest() is not None)
    record = store.read_latest()
    assert record is not None and record.version == 0
    # The published file is GET /params/export's, byte for byte, and the record's hash is its.
    data = store.read_weights(record)
    assert data == trainer.get("/params/export").content
    assert hashlib.sha256(data).hexdigest() == record.sha256
    assert json.loads((tmp_path / "store" / LATEST).read_text())["version"] == 0
    # A step is published at most once per interval (60 s here)...
    assert trainer.post("/train-step", json=TRAIN).status_code == 200
    time.sleep(0.3)
    assert latest_version(store) == 0
    # ...but a checkpoint publishes at once.
    assert trainer.post("/checkpoints").status_code == 201
    wait_until(lambda: latest_version(store) == 1)


def test_a_trainer_publishes_each_change_with_the_default_interval(
    make_client: Callable[..., TestClient], store_url: str, tmp_path: Path
) -> None:
    store = VersionStore(tmp_path / "store")
    trainer = make_client(role="trainer", store_url=store_url)
    for _ in range(3):
        assert trainer.post("/train-step", json=TRAIN).status_code == 200
    wait_until(lambda: latest_version(store) == 3)
    assert store.stored_versions()[-1] == 3


def test_a_predictor_is_not_ready_until_it_holds_a_version(
    make_client: Callable[..., TestClient], store_url: str
) -> None:
    predictor = make_client(role="predictor", store_url=store_url, poll_interval_ms=20)
    assert predictor.get("/readyz").status_code == 503
    assert predictor.get("/v2/health/ready").status_code == 503
    assert predictor.post("/predict", json={"inputs": IMAGES.tolist()}).status_code == 503
    assert predictor.get("/versions").status_code == 503
    trainer = make_client(role="trainer", store_url=store_url)
    assert trainer.post("/train-step", json=TRAIN).status_code == 200
    version, weights = exported(trainer)
    wait_until(lambda: predictor.get("/readyz").status_code == 200)
    wait_until(lambda: predictor.get("/versions").json()["current"] == version)
    body = predictor.post("/predict", json={"inputs": IMAGES.tolist()}).json()
    assert body["version"] == version
    np.testing.assert_allclose(body["outputs"], local_logits(weights, IMAGES), atol=1e-6)
    assert predictor.get("/v2/health/ready").status_code == 200


def test_every_route_that_changes_anything_is_409_on_a_predictor(
    make_client: Callable[..., TestClient], store_url: str, tmp_path: Path
) -> None:
    publish(VersionStore(tmp_path / "store"), 7, build_net(3).state_dict())
    predictor = make_client(role="predictor", store_url=store_url, api_token="a-long-token")
    wait_until(lambda: predictor.get("/readyz").status_code == 200)
    guarded = guarded_routes()  # from the routers' dependencies on require_token
    assert ("POST", "/train-step") in guarded and ("PUT", "/params/import") in guarded
    assert len(guarded) >= 10
    before = training_state(predictor)
    for method, path in guarded:
        url = re.sub(r"\{[^}]+\}", "x", path)
        # With and without the token: a predictor refuses whoever asks.
        for headers in ({}, {"Authorization": "Bearer a-long-token"}):
            response = predictor.request(method, url, json=TRAIN, headers=headers)
            assert response.status_code == 409, (method, path, response.text)
            detail = response.json()["detail"]
            assert "predictor" in detail and "trainer" in detail
    assert training_state(predictor) == before
    assert not (tmp_path / "checkpoints").exists()  # a predictor writes no checkpoint or ledger


def test_a_predictor_never_goes_back_and_skips_a_version_that_fails_its_check(
    make_client: Callable[..., TestClient],
    store_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = VersionStore(tmp_path / "store")
    first = build_net(1).state_dict()
    publish(store, 5, first)
    predictor = make_client(role="predictor", store_url=store_url, poll_interval_ms=20)
    wait_until(lambda: predictor.get("/readyz").status_code == 200)
    assert predictor.get("/versions").json()["current"] == 5

    publish(store, 3, build_net(2).state_dict())  # an older version: never taken
    time.sleep(0.3)
    assert predictor.get("/versions").json()["current"] == 5

    with caplog.at_level(logging.WARNING, logger="lenet.follow"):
        publish_damaged(store, 8, build_net(4).state_dict())  # its hash fails
        wait_until(lambda: "skipping version 8" in caplog.text)
        nan = {k: v.clone() for k, v in build_net(5).state_dict().items()}
        nan["fc3.bias"][0] = float("nan")
        publish(store, 9, nan)  # a sound file of unsound weights: refused too
        wait_until(lambda: "skipping version 9" in caplog.text)
    assert predictor.get("/versions").json()["current"] == 5
    answer = predictor.post("/predict", json={"inputs": IMAGES.tolist()}).json()
    assert answer["version"] == 5
    np.testing.assert_allclose(answer["outputs"], local_logits(first, IMAGES), atol=1e-6)

    newest = build_net(6).state_dict()
    publish(store, 12, newest)
    wait_until(lambda: predictor.get("/versions").json()["current"] == 12)
    listed = predictor.get("/versions").json()
    assert [entry["version"] for entry in listed["versions"]] == [12, 5]
    assert listed["lag_ms"] == 0
    pinned = predictor.post("/predict", json={"inputs": IMAGES.tolist(), "version": 5}).json()
    np.testing.assert_allclose(pinned["outputs"], local_logits(first, IMAGES), atol=1e-6)
    current = predictor.post("/predict", json={"inputs": IMAGES.tolist()}).json()
    np.testing.assert_allclose(current["outputs"], local_logits(newest, IMAGES), atol=1e-6)
    metrics = predictor.get("/metrics").text
    assert "lenet_model_version 12.0" in metrics and "lenet_store_version 12.0" in metrics
    assert "lenet_follow_lag_seconds 0.0" in metrics


def test_a_predictor_reports_its_lag_while_a_newer_version_is_unusable(
    make_client: Callable[..., TestClient], store_url: str, tmp_path: Path
) -> None:
    store = VersionStore(tmp_path / "store")
    publish(store, 1, build_net(1).state_dict())
    predictor = make_client(role="predictor", store_url=store_url, poll_interval_ms=20)
    wait_until(lambda: predictor.get("/readyz").status_code == 200)
    publish_damaged(store, 2, build_net(2).state_dict())
    time.sleep(0.4)
    listed = predictor.get("/versions").json()
    assert listed["current"] == 1 and listed["lag_ms"] >= 300
    lag = re.search(r"^lenet_follow_lag_seconds (\S+)$", predictor.get("/metrics").text, re.M)
    assert lag is not None and float(lag.group(1)) >= 0.3


def test_a_trainer_continues_past_every_version_in_the_store(
    store_url: str, tmp_path: Path
) -> None:
    publish(VersionStore(tmp_path / "store"), 5000, build_net(1).state_dict())
    settings = Settings(
        device="cpu", seed=0, role="trainer", store_url=store_url,
        checkpoint_dir=tmp_path / "fresh", autosave_on_shutdown=False,
    )  # fmt: skip
    with TestClient(create_app(settings)) as trainer:
        start = trainer.get("/versions").json()["current"]
        step = trainer.post("/train-step", json=TRAIN).json()
        assert start > 5000 and step["version"] == start + 1
        wait_until(lambda: latest_version(VersionStore(tmp_path / "store")) == start + 1)
