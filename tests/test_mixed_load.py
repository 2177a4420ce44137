"""Mixed load against the real server: predictions, training steps, /loss, checkpoint saves,
restores, imports and resets from 50 concurrent clients, then a full audit of what came back.

Every change of the weights reports the version it made; ordered by version, those answers must
form one unbroken history whose steps add up, and every prediction must name a version of that
history and agree with every other prediction of the same image at the same version.
"""

import asyncio
import base64
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import torch
from safetensors.torch import save as save_safetensors

from tests.conftest import SEED, image_batch, local_net
from tests.server import LiveServer, start_test_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

CLIENTS = 50
REQUESTS = 1000
# Relative frequencies: predictions to training steps about 10:1, the rest now and then.
MIX = {
    "predict": 100,
    "train": 10,
    "loss": 3,
    "save": 2,
    "restore": 1,
    "import": 1,
    "reset": 0.3,
}
IMAGES = image_batch(8, seed=11)  # the fixed inputs whose answers are compared across requests
JSON = {"content-type": "application/json"}


@dataclass
class Log:
    """What the clients saw."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    # version -> (kind, step) for every answer that made a new version
    changes: dict[int, tuple[str, int]] = field(default_factory=dict)
    duplicate_versions: list[int] = field(default_factory=list)
    restore_targets: dict[int, int] = field(default_factory=dict)  # version -> checkpoint step
    imported: dict[int, int] = field(default_factory=dict)  # version -> seed of the weights
    resets: dict[int, int] = field(default_factory=dict)  # version -> seed
    saved: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (version, step)
    # (image index, version) -> logits seen
    outputs: defaultdict[tuple[int, int], list[np.ndarray]] = field(
        default_factory=lambda: defaultdict(list)
    )
    read_versions: list[tuple[str, int, int]] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)


def _predict_body(indices: list[int], rng: random.Random) -> bytes:
    batch = IMAGES[indices]
    if rng.random() < 0.5:
        return orjson.dumps({"inputs": batch[:, 0].tolist()})
    data = base64.b64encode(batch.astype("<f4").tobytes()).decode()
    return orjson.dumps({"tensor": {"shape": list(batch.shape), "dtype": "float32", "data": data}})


def _train_body(rng: random.Random, loss: bool = False) -> bytes:
    n = rng.randint(1, 8)
    images = image_batch(n, seed=rng.randrange(10**6))
    body: dict[str, Any] = {"inputs": images.tolist(), "targets": [rng.randrange(10)] * n}
    if loss:
        body["backward"] = rng.random() < 0.5
    return orjson.dumps(body)


def _weights_file(seed: int) -> bytes:
    return bytes(save_safetensors({n: p.detach() for n, p in local_net(seed).named_parameters()}))


def _local_logits(seed: int) -> np.ndarray:
    with torch.no_grad():
        return local_net(seed)(torch.from_numpy(IMAGES)).numpy()


async def _worker(
    client: httpx.AsyncClient, plan: asyncio.Queue[tuple[str, int]], log: Log
) -> None:
    while True:
        try:
            kind, seed = plan.get_nowait()
        except asyncio.QueueEmpty:
            return
        try:
            await _request(client, kind, seed, log)
        except httpx.TransportError as error:  # a dropped connection is a failure too
            log.transport_errors.append(f"{kind}: {error!r}")


async def _request(client: httpx.AsyncClient, kind: str, seed: int, log: Log) -> None:
    """Send one request of `kind` (its content drawn from `seed`) and log what came back."""
    rng = random.Random(seed)
    body: Any = None
    if kind == "predict":
        indices = rng.sample(range(len(IMAGES)), rng.randint(1, 4))
        response = await client.post("/predict", content=_predict_body(indices, rng), headers=JSON)
        body = response.json() if response.status_code == 200 else None
        if body is not None:
            for row, index in enumerate(indices):
                log.outputs[(index, body["version"])].append(np.asarray(body["outputs"][row]))
            log.read_versions.append(("predict", body["version"], body["step"]))
    elif kind in ("train", "loss"):
        path = "/train-step" if kind == "train" else "/loss"
        response = await client.post(path, content=_train_body(rng, kind == "loss"), headers=JSON)
        body = response.json() if response.status_code == 200 else None
        if body is not None and kind == "train":
            _record_change(log, body["version"], "train", body["step"])
        elif body is not None:
            log.read_versions.append(("loss", body["version"], body["step"]))
    elif kind == "save":
        response = await client.post("/checkpoints")
        if response.status_code == 201:
            body = response.json()
            log.saved[body["id"]] = (body["version"], body["step"])
    elif kind == "restore":
        if not log.saved:
            return
        checkpoint_id = rng.choice(sorted(log.saved))
        response = await client.post(f"/checkpoints/{checkpoint_id}/restore")
        if response.status_code == 200:
            body = response.json()
            _record_change(log, body["version"], "restore", body["step"])
            log.restore_targets[body["version"]] = log.saved[checkpoint_id][1]
    elif kind == "import":
        weights_seed = 100 + seed % 3
        response = await client.put(
            "/params/import",
            content=_weights_file(weights_seed),
            headers={"content-type": "application/octet-stream"},
        )
        if response.status_code == 200:
            body = response.json()
            _record_change(log, body["version"], "import", body["step"])
            log.imported[body["version"]] = weights_seed
    else:
        reset_seed = 200 + seed % 3
        response = await client.post("/reset", json={"seed": reset_seed})
        if response.status_code == 200:
            body = response.json()
            _record_change(log, body["version"], "reset", body["step"])
            log.resets[body["version"]] = reset_seed
    log.statuses[(kind, response.status_code)] += 1


def _record_change(log: Log, version: int, kind: str, step: int) -> None:
    if version in log.changes:
        log.duplicate_versions.append(version)
    log.changes[version] = (kind, step)


async def _run_load(url: str, log: Log) -> None:
    rng = random.Random(SEED)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=REQUESTS)
    plan: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for number, kind in enumerate(kinds):
        plan.put_nowait((kind, number))
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(_worker(client, plan, log) for _ in range(CLIENTS)))


@pytest.fixture
def server(tmp_path: Path) -> Any:
    """A real server, seeded, keeping 5 checkpoints (so some restores find theirs pruned)."""
    live = start_test_server(
        tmp_path,
        seed=SEED,
        keep_checkpoints=5,
        # Longer than any pause a starved client can take between two requests on a connection,
        # so uvicorn never closes one just as the next request goes out (a client-side race).
        timeout_keep_alive=60,
        log_level="warning",
    )
    yield live
    live.stop()


def test_mixed_load_keeps_one_consistent_history(server: LiveServer) -> None:
    log = Log()
    asyncio.run(_run_load(server.url, log))
    with server.client() as client:
        final = client.get("/model").json()
        assert client.get("/readyz").status_code == 200
        # Afterwards, weights known exactly: an import, then each fixed image once more.
        imported = client.put("/params/import", content=_weights_file(100)).json()["version"]
        _record_change(log, imported, "import", 0)
        log.imported[imported] = 100
        after = client.post("/predict", json={"inputs": IMAGES[:, 0].tolist()}).json()
        assert after["version"] == imported
        for index, logits in enumerate(after["outputs"]):
            log.outputs[(index, imported)].append(np.asarray(logits))

    # Every answer is a success or a deliberate refusal (a restore of a pruned checkpoint).
    unexpected = {
        key: count
        for key, count in log.statuses.items()
        if not (200 <= key[1] < 300 or key[1] == 503 or key == ("restore", 404))
    }
    assert not unexpected, unexpected
    assert not log.transport_errors, log.transport_errors[:5]
    assert sum(log.statuses.values()) > REQUESTS * 0.95  # restores before any save are skipped

    # One new version per change, no gaps, no repeats, and the server ends on the last one.
    assert not log.duplicate_versions
    versions = sorted(log.changes)
    assert versions == list(range(1, len(versions) + 1))
    assert final["version"] == versions[-2] and imported == versions[-1]

    # Ordered by version, the steps add up: +1 per training step, 0 after an import or a reset,
    # the checkpoint's own step after a restore.
    step_at = {0: 0}
    for version in versions:
        kind, step = log.changes[version]
        expected = {
            "train": step_at[version - 1] + 1,
            "import": 0,
            "reset": 0,
            "restore": log.restore_targets.get(version),
        }[kind]
        assert step == expected, (version, kind, step, expected)
        step_at[version] = step
    assert final["step"] == step_at[versions[-2]]
    # The step counter counts exactly the successful training steps (between replacements).
    trained = sum(1 for kind, _ in log.changes.values() if kind == "train")
    assert trained == log.statuses[("train", 200)]

    # Reads name versions that existed, with the step those weights had.
    for source, version, step in log.read_versions:
        assert version in step_at, (source, version)
        assert step == step_at[version], (source, version, step)
    for version, step in log.saved.values():
        assert step_at[version] == step

    # The same image at the same version gives the same scores, whatever batch it rode in.
    for (index, version), seen in log.outputs.items():
        for logits in seen[1:]:
            np.testing.assert_allclose(logits, seen[0], atol=1e-5, err_msg=f"{index}@{version}")
    # And where the weights are known exactly, the scores are those weights' scores.
    known = {0: SEED, **log.imported, **log.resets}
    expected_logits = {seed: _local_logits(seed) for seed in set(known.values())}
    checked = 0
    for (index, version), seen in log.outputs.items():
        if version in known:
            np.testing.assert_allclose(seen[0], expected_logits[known[version]][index], atol=1e-5)
            checked += 1
    assert checked > 0
    assert server.process.poll() is None
    assert "Traceback" not in server.log()
