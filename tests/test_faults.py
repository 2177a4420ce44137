"""Faults: SIGKILL while checkpoints are being written, corrupt checkpoints on disk, SIGTERM with
a request in flight, and readiness while the model is not (or not validly) loaded."""

import hashlib
import io
import json
import logging
import os
import pickle
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as save_safetensors

from app.checkpoints import META_FILE, OPTIMIZER_FILE, WEIGHTS_FILE, CheckpointStore
from app.main import create_app
from app.settings import Settings
from tests.conftest import SEED, image_batch, local_net
from tests.server import read_http_response, start_server

ONE_IMAGE = image_batch(1)[0, 0].tolist()
TRAIN = {"inputs": image_batch(4).tolist(), "targets": [1, 2, 3, 4]}
KILLS = 3


def _train_until_stopped(url: str, stop: threading.Event, acknowledged: list[int]) -> None:
    """Post training steps back to back; record each acknowledged version until the server dies."""
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            try:
                response = client.post("/train-step", json=TRAIN)
            except httpx.HTTPError:
                return  # killed under us
            if response.status_code == 200:
                acknowledged.append(response.json()["version"])


@pytest.mark.server
@pytest.mark.slow
def test_sigkill_during_autosaves_never_loses_an_acknowledged_step(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    settings: dict[str, Any] = {
        "seed": SEED,
        "checkpoint_dir": checkpoints,
        "autosave_every": 1,  # a checkpoint per step: most kills land in or near a write
        "keep_checkpoints": 3,
        "autosave_on_shutdown": "false",
        "log_level": "warning",
    }
    rng = random.Random(SEED)
    store = CheckpointStore(checkpoints, keep=3)
    server = start_server(tmp_path / "logs", **settings)
    for _ in range(KILLS):
        stop, acknowledged = threading.Event(), []
        trainer = threading.Thread(
            target=_train_until_stopped, args=(server.url, stop, acknowledged)
        )
        trainer.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        stop.set()
        trainer.join(30)
        assert acknowledged, "no step was acknowledged before the kill"

        # On disk, offline: every listed checkpoint is whole and verifies.
        listed = store.list()
        assert listed and all(not info.id.startswith(".") for info in listed)
        for info in listed:
            loaded = store.load(info.id)
            assert loaded.info.version == info.version
        newest = max(listed, key=lambda info: info.version)
        # Autosave runs before a step is answered, so an acknowledged step is already durable.
        assert newest.version >= acknowledged[-1]

        server = start_server(tmp_path / "logs", **settings)
        with server.client() as client:
            model = client.get("/model").json()
            assert (model["version"], model["step"]) == (newest.version, newest.step)
            # After a kill the next version jumps past the ledger's reserved block (app.versions).
            assert client.post("/train-step", json=TRAIN).json()["version"] > newest.version
        assert "skipping" not in server.log()
    server.stop()


def _corrupt_flip(folder: Path, _: Path) -> None:
    path = folder / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_truncate(folder: Path, _: Path) -> None:
    path = folder / OPTIMIZER_FILE
    path.write_bytes(path.read_bytes()[:100])


def _corrupt_meta(folder: Path, _: Path) -> None:
    (folder / META_FILE).write_bytes(b'{"id": "truncated')


def _corrupt_missing(folder: Path, _: Path) -> None:
    (folder / WEIGHTS_FILE).unlink()


def _rewrite(folder: Path, name: str, data: bytes) -> None:
    """Replace a file and fix its checksum, as a deliberate forger would."""
    (folder / name).write_bytes(data)
    meta = json.loads((folder / META_FILE).read_text())
    meta["sha256"][name] = hashlib.sha256(data).hexdigest()
    (folder / META_FILE).write_text(json.dumps(meta))


def _forge_nan_weights(folder: Path, _: Path) -> None:
    tensors = {n: p.detach().clone() for n, p in local_net().named_parameters()}
    tensors["fc3.bias"][0] = float("nan")
    _rewrite(folder, WEIGHTS_FILE, bytes(save_safetensors(tensors)))


class _RunsOnUnpickle:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _forge_pickle(folder: Path, marker: Path) -> None:
    _rewrite(folder, OPTIMIZER_FILE, pickle.dumps({"state": {0: _RunsOnUnpickle(marker)}}))


def _forge_torch_pickle(folder: Path, marker: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"state": {}, "param_groups": [], "x": _RunsOnUnpickle(marker)}, buffer)
    _rewrite(folder, OPTIMIZER_FILE, buffer.getvalue())


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_flip,
        _corrupt_truncate,
        _corrupt_meta,
        _corrupt_missing,
        _forge_nan_weights,
        _forge_pickle,
        _forge_torch_pickle,
    ],
)
def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(
    make_client: Callable[..., TestClient],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    corrupt: Callable[[Path, Path], None],
) -> None:
    first = make_client()
    saved = []
    for _ in range(3):
        assert first.post("/train-step", json=TRAIN).status_code == 200
        saved.append(first.post("/checkpoints").json())
    first.__exit__(None, None, None)
    checkpoints = Path(first.app.state.settings.checkpoint_dir)  # type: ignore[attr-defined]
    marker = tmp_path / "unpickled"
    corrupt(checkpoints / saved[-1]["id"], marker)
    with caplog.at_level(logging.WARNING):
        second = make_client(seed=5)
    assert (second.get("/model").json()["version"]) == saved[-2]["version"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(saved[-1]["id"] in message for message in warnings), warnings
    assert not marker.exists(), "a checkpoint's pickle was run"
    assert second.get("/readyz").status_code == 200


@pytest.mark.server
def test_sigterm_finishes_the_request_in_flight_then_saves_and_exits(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    server = start_server(
        tmp_path / "logs",
        seed=SEED,
        checkpoint_dir=checkpoints,
        autosave_on_shutdown="true",
        timeout_graceful_shutdown=20,
    )
    body = json.dumps(TRAIN).encode()
    half = len(body) // 2
    with server.connect() as sock:
        head = (
            "POST /train-step HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body[:half])  # the request is in flight: half its body is owed
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert server.process.poll() is None, "the server quit with a request in flight"
        with pytest.raises(OSError):  # no new connections once shutting down
            server.connect().close()
        sock.sendall(body[half:])
        status, _, answer = read_http_response(sock)
    assert status == 200, answer
    assert json.loads(answer)["version"] == 1
    server.process.wait(30)
    assert server.process.returncode in (0, -signal.SIGTERM), server.log()
    # The step taken during shutdown is in the final checkpoint.
    newest = CheckpointStore(checkpoints, keep=5).list()
    assert [(info.version, info.step) for info in newest] == [(1, 1)]
    assert "saved checkpoint" in server.log()
    assert "Traceback" not in server.log()


def test_not_ready_before_the_model_is_loaded(make_settings: Callable[..., Settings]) -> None:
    # No `with`: the lifespan has not run, so the model is not loaded yet.
    client = TestClient(create_app(make_settings()))
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["status"] == "starting"
    assert client.get("/healthz").status_code == 200


def test_not_ready_while_the_weights_are_not_finite(client: TestClient) -> None:
    # Imports, restores and steps all refuse non-finite weights, so the only way in is the
    # engine itself: adopt such weights on its torch thread, as a bug elsewhere might.
    engine = client.app.state.engine  # type: ignore[attr-defined]
    poisoned = {n: p.detach().clone() for n, p in local_net().named_parameters()}
    poisoned["conv1.bias"][0] = float("inf")
    engine._executor.submit(engine._copy_weights, poisoned).result()
    engine.weights_finite = engine._executor.submit(engine._answers_are_finite).result()
    response = client.get("/readyz")
    assert response.status_code == 503 and "finite" in response.json()["status"]
    assert client.get("/healthz").status_code == 200
    healthy = save_safetensors({n: p.detach() for n, p in local_net().named_parameters()})
    assert client.put("/params/import", content=bytes(healthy)).status_code == 200
    assert client.get("/readyz").status_code == 200
    assert np.isfinite(client.post("/predict", json={"inputs": ONE_IMAGE}).json()["outputs"]).all()


def test_checkpoint_writes_leave_no_temporaries_behind(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    weights = {n: p.detach() for n, p in local_net().named_parameters()}
    for version in range(1, 5):
        store.save(weights, {"state": {}, "param_groups": []}, version, version, {"name": "sgd"})
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2 and not any(name.startswith(".") for name in names)
    assert [info.version for info in store.list()] == [4, 3]
