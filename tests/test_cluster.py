"""A cluster of real processes: one trainer, two predictors sharing a store folder, and HAProxy
in front (predictions to the predictors, everything else to the trainer). Training runs while a
bounded load of predictions does; every answer's version is one the trainer made and equals a
local forward with that version's weights; a predictor's versions never go back; `min_version`
gives read-your-writes through HAProxy; with the trainer killed (SIGKILL) predictions are still
answered and a new predictor becomes ready; a restarted trainer continues past every version.

HAProxy is started by `start_haproxy` below (tests/cluster.py, the shared helper, is not on main
yet); the tests skip where no `haproxy` binary is installed."""

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from app.store import VersionStore
from tests.cluster import Balancer, start_balancer
from tests.conftest import image_batch
from tests.server import LiveServer, start_test_server
from tests.test_versions_resident import TRAIN, exported, local_logits

pytestmark = [pytest.mark.server, pytest.mark.slow]


@dataclass
class Cluster:
    root: Path
    store_url: str
    trainer: LiveServer
    predictors: list[LiveServer]
    proxy: Balancer
    kept: dict[int, dict[str, torch.Tensor]]  # every version the trainer made, its weights


def start_trainer(root: Path, store_url: str) -> LiveServer:
    return start_test_server(root / "trainer", role="trainer", store_url=store_url, torch_threads=1)


def start_predictor(root: Path, store_url: str, name: str) -> LiveServer:
    return start_test_server(root / name, role="predictor", store_url=store_url, torch_threads=1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    store_url = (root / "store").as_uri()
    trainer = start_trainer(root, store_url)
    predictors: list[LiveServer] = []
    try:
        predictors = [start_predictor(root, store_url, f"predictor{i}") for i in range(2)]
        # The repository's own HAProxy configuration, its discovery lines pointed at these.
        proxy = start_balancer(trainer.url, [p.url for p in predictors], root / "haproxy")
        with trainer.client() as http:
            version, weights = exported(http)
        try:
            yield Cluster(root, store_url, trainer, predictors, proxy, {version: weights})
        finally:
            proxy.stop()
    finally:
        for server in [trainer, *predictors]:
            server.stop(signal.SIGKILL)


def _check(kept: dict[int, Any], images: np.ndarray, body: dict[str, Any]) -> None:
    assert body["version"] in kept, f"version {body['version']} was never made by the trainer"
    np.testing.assert_allclose(
        body["outputs"], local_logits(kept[body["version"]], images), rtol=0, atol=1e-6
    )


def test_every_answer_under_training_is_a_trainer_version_and_read_your_writes_holds(
    cluster: Cluster,
) -> None:
    kept = cluster.kept
    done = threading.Event()
    errors: list[str] = []
    answers: list[tuple[np.ndarray, dict[str, Any]]] = []  # through HAProxy
    seen: list[list[int]] = [[] for _ in cluster.predictors]  # each predictor's, in order
    read_your_writes = 0

    def train() -> None:
        nonlocal read_your_writes
        try:
            with httpx.Client(base_url=cluster.proxy.url, timeout=30) as http:
                for step in range(60):
                    response = http.post("/train-step", json=TRAIN)
                    assert response.status_code == 200, response.text
                    version = response.json()["version"]
                    exported_version, weights = exported(http)
                    assert exported_version == version
                    kept[version] = weights
                    if step % 5 == 0:  # read-your-writes through HAProxy, to either predictor
                        images = image_batch(1, seed=step)
                        body = {"inputs": images.tolist(), "min_version": version}
                        answer = http.post("/predict", json=body)
                        assert answer.status_code == 200, answer.text
                        assert answer.json()["version"] >= version
                        answers.append((images, answer.json()))
                        read_your_writes += 1
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(f"trainer thread: {error!r}")
        finally:
            done.set()

    def load(index: int) -> None:
        deadline = time.monotonic() + 90
        try:
            with (
                httpx.Client(base_url=cluster.proxy.url, timeout=30) as proxy,
                cluster.predictors[index].client() as direct,
            ):
                for n in range(300):
                    if (done.is_set() and n >= 40) or time.monotonic() > deadline:
                        break
                    images = image_batch(1 + n % 3, seed=1000 * index + n)
                    response = proxy.post("/predict", json={"inputs": images.tolist()})
                    assert response.status_code == 200, response.text
                    answers.append((images, response.json()))
                    mine = direct.post("/predict", json={"inputs": images.tolist()})
                    assert mine.status_code == 200, mine.text
                    seen[index].append(mine.json()["version"])
                    answers.append((images, mine.json()))
                    if n % 10 == 0:  # what it answered stays resident and can be pinned
                        body = {"inputs": images.tolist(), "version": mine.json()["version"]}
                        pinned = direct.post("/predict", json=body)
                        assert pinned.status_code == 200, pinned.text
                        assert pinned.json()["version"] == mine.json()["version"]
                        answers.append((images, pinned.json()))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(f"load thread {index}: {error!r}")

    threads = [threading.Thread(target=train)]
    threads += [threading.Thread(target=load, args=(i,)) for i in range(len(cluster.predictors))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert read_your_writes == 12 and len(answers) >= 150
    for images, body in answers:
        _check(kept, images, body)
    for versions in seen:
        assert versions == sorted(versions), "a predictor's versions went back"
        assert len(set(versions)) >= 2, "the predictor never followed the trainer"
    # Once training stops, both predictors come to serve the trainer's newest version.
    newest = max(kept)
    for predictor in cluster.predictors:
        with predictor.client() as direct:
            body = {"inputs": image_batch(1).tolist(), "min_version": newest}
            assert direct.post("/predict", json=body).json()["version"] == newest
            listed = direct.get("/versions").json()
            assert listed["current"] == newest and listed["lag_ms"] == 0
        metrics = httpx.get(f"{predictor.url}/metrics").text
        assert f"lenet_model_version {float(newest)}" in metrics


def test_killing_a_predictor_mid_load_loses_no_request(cluster: Cluster) -> None:
    doomed = start_predictor(cluster.root, cluster.store_url, "doomed")
    balancer = start_balancer(
        cluster.trainer.url, [cluster.predictors[0].url, doomed.url], cluster.root / "lb-kill"
    )
    statuses: list[int] = []
    failures: list[str] = []
    answered = threading.Semaphore(0)
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(base_url=balancer.url, timeout=30) as http:
            for n in range(25):  # 8 clients x 25: 200 predictions, bounded
                images = image_batch(1, seed=10_000 + 100 * index + n)
                try:
                    response = http.post("/predict", json={"inputs": images.tolist()})
                except httpx.HTTPError as error:
                    with lock:
                        failures.append(repr(error))
                    answered.release()
                    continue
                with lock:
                    statuses.append(response.status_code)
                if response.status_code == 200:
                    _check(cluster.kept, images, response.json())
                answered.release()

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for _ in range(60):
            assert answered.acquire(timeout=60)
        doomed.stop(signal.SIGKILL)  # mid-load: requests are in flight to it
        for thread in threads:
            thread.join(120)
        log = balancer.log()
    finally:
        balancer.stop()
        doomed.stop(signal.SIGKILL)
    assert not failures, f"{failures}\n{log[-3000:]}"
    assert len(statuses) == 200
    assert statuses.count(200) == 200, f"lost: {[s for s in statuses if s != 200]}"


def test_predictors_outlive_the_trainer_and_a_restarted_one_continues(cluster: Cluster) -> None:
    kept = cluster.kept
    served = max(kept)
    cluster.trainer.stop(signal.SIGKILL)
    with httpx.Client(base_url=cluster.proxy.url, timeout=30) as proxy:
        for n in range(20):
            images = image_batch(1, seed=n)
            response = proxy.post("/predict", json={"inputs": images.tolist()})
            assert response.status_code == 200, response.text
            assert response.json()["version"] == served
            _check(kept, images, response.json())
        cluster.proxy.wait_up(trainers=0)  # HAProxy's checks have seen the trainer go
        assert proxy.post("/train-step", json=TRAIN).status_code == 503  # no trainer: HAProxy

    # A predictor started now loads the newest version in the store and becomes ready.
    late = start_predictor(cluster.root, cluster.store_url, "late")
    try:
        latest = VersionStore(cluster.root / "store").read_latest()
        assert latest is not None and latest.version == served
        with late.client() as http:
            images = image_batch(2, seed=7)
            body = http.post("/predict", json={"inputs": images.tolist()}).json()
            assert body["version"] == served
            _check(kept, images, body)

        # The trainer comes back on the same checkpoint folder and store: its versions continue
        # past every version in the store (and every one ever answered).
        trainer = start_trainer(cluster.root, cluster.store_url)
        try:
            with trainer.client() as http:
                step = http.post("/train-step", json=TRAIN).json()
                assert step["version"] > served
                version, weights = exported(http)
                kept[version] = weights
            for predictor in [*cluster.predictors, late]:
                with predictor.client() as direct:
                    images = image_batch(1, seed=3)
                    body = {"inputs": images.tolist(), "min_version": version}
                    answer = direct.post("/predict", json=body)
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["version"] == version
                    _check(kept, images, answer.json())
        finally:
            trainer.stop(signal.SIGKILL)
    finally:
        late.stop(signal.SIGKILL)
