"""Durable versions: the ledger's blocks, its floor after a restart, a missing or corrupt ledger,
and real servers killed (SIGKILL) or stopped without a checkpoint, whose versions never repeat."""

import hashlib
import json
import logging
import signal
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors.torch import load

from app.checkpoints import CheckpointStore
from app.versions import (
    LEDGER_FILE,
    UNKNOWN_GAP,
    VersionLedger,
    VersionsNotDurable,
)
from models.lenet import Net
from tests.conftest import image_batch
from tests.server import LiveServer, start_test_server


def _reserved(folder: Path) -> int:
    reserved: int = json.loads((folder / LEDGER_FILE).read_bytes())["reserved"]
    return reserved


# ----------------------------------------------------------------- the ledger alone


def test_a_block_is_reserved_once_and_numbers_follow_one_by_one(tmp_path: Path) -> None:
    ledger = VersionLedger(tmp_path, block=4)
    assert ledger.open(highest_checkpoint=None) == -1
    assert ledger.initial(seeded=False) == 0  # random weights: reserved at once
    assert _reserved(tmp_path) == 3
    stamp = (tmp_path / LEDGER_FILE).stat().st_mtime_ns
    assert [ledger.next(v) for v in (0, 1, 2)] == [1, 2, 3]
    assert (tmp_path / LEDGER_FILE).stat().st_mtime_ns == stamp  # no write inside a block
    assert ledger.next(3) == 4
    assert _reserved(tmp_path) == 7
    assert not [p for p in tmp_path.iterdir() if p.name != LEDGER_FILE]  # no temporary left


def test_after_a_crash_the_next_version_is_past_every_reserved_one(tmp_path: Path) -> None:
    first = VersionLedger(tmp_path, block=4)
    first.open(None)
    version = first.initial(seeded=False)
    for _ in range(5):
        version = first.next(version)
    assert version == 5 and _reserved(tmp_path) == 7
    # No settle: the process died. A checkpoint of version 2 is what the next one loads.
    second = VersionLedger(tmp_path, block=4)
    assert second.open(highest_checkpoint=2) == 7
    assert second.next(2) == 8  # the checkpoint keeps 2; the next change jumps past 7


def test_a_clean_shutdown_settles_so_the_next_start_continues_exactly(tmp_path: Path) -> None:
    first = VersionLedger(tmp_path, block=1024)
    first.open(None)
    assert first.next(first.initial(seeded=True)) == 1
    first.settle(1)
    assert _reserved(tmp_path) == 1
    second = VersionLedger(tmp_path)
    assert second.open(highest_checkpoint=1) == 1
    assert second.next(1) == 2


def test_settle_never_gives_back_what_another_process_reserved(tmp_path: Path) -> None:
    first, second = VersionLedger(tmp_path, block=4), VersionLedger(tmp_path, block=4)
    first.open(None)
    assert first.initial(seeded=False) == 0
    second.open(None)
    assert second.initial(seeded=False) == 4  # past the first's block
    assert first.next(3) == 8  # its block is spent: it re-reads and starts past the second's
    second.settle(4)
    assert _reserved(tmp_path) == 4 + 3 + 4  # the first's block, untouched
    first.settle(8)
    assert _reserved(tmp_path) == 8


def test_two_processes_opened_together_never_share_a_number(tmp_path: Path) -> None:
    first, second = VersionLedger(tmp_path, block=4), VersionLedger(tmp_path, block=4)
    assert first.open(None) == second.open(None) == -1
    assert first.initial(seeded=False) == 0
    assert second.initial(seeded=False) == 4  # it read the first's block before taking one
    assert [first.next(v) for v in range(3)] == [1, 2, 3]


def test_a_seeded_fresh_folder_stays_empty_until_something_changes(tmp_path: Path) -> None:
    ledger = VersionLedger(tmp_path / "checkpoints")
    ledger.open(None)
    assert ledger.initial(seeded=True) == 0
    assert not (tmp_path / "checkpoints").exists()
    assert ledger.next(0) == 1
    assert _reserved(tmp_path / "checkpoints") == 1024


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b'{"kind": "lenet-serve version ledger", "format": 1}', b"[1024]"],
    ids=["garbage", "empty", "no-reserved", "not-an-object"],
)
def test_a_corrupt_ledger_never_restarts_from_zero(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / LEDGER_FILE).write_bytes(content)
    ledger = VersionLedger(tmp_path)
    with caplog.at_level(logging.WARNING):
        floor = ledger.open(highest_checkpoint=12)
    assert floor == 12 + UNKNOWN_GAP
    assert any("unreadable" in record.getMessage() for record in caplog.records)
    assert ledger.initial(seeded=True) == floor + 1  # not version 0, seed or not
    assert _reserved(tmp_path) > floor  # rewritten whole


def test_a_missing_or_stale_ledger_beside_checkpoints_jumps_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert VersionLedger(tmp_path).open(highest_checkpoint=7) == 7 + UNKNOWN_GAP
        (tmp_path / LEDGER_FILE).write_text(
            json.dumps({"kind": "lenet-serve version ledger", "format": 1, "reserved": 3})
        )
        assert VersionLedger(tmp_path).open(highest_checkpoint=7) == 7 + UNKNOWN_GAP
    messages = [record.getMessage() for record in caplog.records]
    assert any("missing" in m for m in messages) and any("below checkpoint" in m for m in messages)


def test_an_unwritable_folder_refuses_new_versions_with_507(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_bytes(b"in the way")
    folder = tmp_path / "file" / "checkpoints"
    ledger = VersionLedger(folder)
    assert ledger.open(None) == -1
    with caplog.at_level(logging.WARNING):
        assert ledger.initial(seeded=False) == 0  # still serves its start-up weights
    assert any(str(folder) in record.getMessage() for record in caplog.records)
    with pytest.raises(VersionsNotDurable) as refused:
        ledger.next(0)
    assert refused.value.status_code == 507 and str(folder) in refused.value.detail


def test_the_ledger_is_never_mistaken_for_a_checkpoint_nor_pruned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    store.versions.open(None)
    state = {"state": {}, "param_groups": []}
    for version in (1, 2, 3):
        store.save(dict(Net().named_parameters()), state, version, version, {})
    (newest,) = store.list()
    assert newest.version == 3
    assert _reserved(tmp_path) == 1024  # the first save reserved its version
    assert {p.name for p in tmp_path.iterdir()} == {newest.id, LEDGER_FILE}


# ----------------------------------------------------------------- real servers, real signals

TRAIN = {"inputs": image_batch(4).tolist(), "targets": [1, 2, 3, 4]}


def _exported(client: httpx.Client) -> tuple[int, str]:
    """The current version and the SHA-256 of its weights, from one GET /params/export (its
    safetensors header carries the version, so both come from the same instant)."""
    data = client.get("/params/export").content
    (header_size,) = struct.unpack("<Q", data[:8])
    version = int(json.loads(data[8 : 8 + header_size])["__metadata__"]["version"])
    tensors = load(data)
    digest = hashlib.sha256(b"".join(tensors[n].numpy().tobytes() for n in sorted(tensors)))
    return version, digest.hexdigest()


class _Answers:
    """Every version answered, with the hash of the weights it named."""

    def __init__(self) -> None:
        self.hashes: dict[int, str] = {}
        self.highest = -1

    def record(self, version: int, digest: str) -> None:
        known = self.hashes.setdefault(version, digest)
        assert known == digest, f"version {version} named two different sets of weights"
        self.highest = max(self.highest, version)


def _run_once(server: LiveServer, answers: _Answers, steps: int) -> tuple[int, list[int]]:
    """Check the start-up version, train `steps` steps recording each answer; returns the
    highest version answered before this run and the versions of its steps."""
    earlier = answers.highest
    with server.client() as client:
        answers.record(*_exported(client))
        before = answers.highest
        versions = []
        for _ in range(steps):
            step = client.post("/train-step", json=TRAIN)
            assert step.status_code == 200, step.text
            version, digest = _exported(client)
            assert version == step.json()["version"]
            versions.append(version)
            answers.record(version, digest)
    assert versions[0] > before, "a new version after a restart repeated an earlier number"
    assert versions == list(range(versions[0], versions[0] + steps))  # +1 a step in a process
    return earlier, versions


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop", "autosave_every"),
    [(signal.SIGKILL, 0), (signal.SIGKILL, 3), (signal.SIGTERM, 0), (signal.SIGTERM, 4)],
    ids=["sigkill-no-checkpoints", "sigkill-autosave-3", "sigterm-no-save", "sigterm-autosave-4"],
)
def test_versions_never_name_two_sets_of_weights_across_restarts(
    tmp_path: Path, stop: signal.Signals, autosave_every: int
) -> None:
    """SIGKILL, or SIGTERM with LENET_AUTOSAVE_ON_SHUTDOWN=false (start_test_server's default),
    three times over one folder: no version ever names two hashes, and every version made after
    a restart is larger than every one answered before it."""
    answers, runs, first_new = _Answers(), [], []
    settings: dict[str, Any] = {"autosave_every": autosave_every, "log_level": "warning"}
    for run in range(4):
        server = start_test_server(tmp_path, **settings)
        try:
            earlier, versions = _run_once(server, answers, steps=5 + run)
            runs.append(versions)
            # The first number this run made: its start-up version when that is new (weights
            # from no checkpoint), else its first step's.
            first_new.append(min(v for v in answers.hashes if v > earlier))
        finally:
            status = server.stop(stop)
        assert status in ((-stop,) if stop == signal.SIGKILL else (0, -stop)), server.log()
        assert "Traceback" not in server.log()
    assert len(answers.hashes) >= sum(len(r) for r in runs)
    if stop == signal.SIGTERM:
        # A clean stop settles the ledger: the next run continues exactly, with no jump.
        assert all(
            new == done[-1] + 1 for done, new in zip(runs[:-1], first_new[1:], strict=True)
        ), runs
    else:
        assert all(new > done[-1] for done, new in zip(runs[:-1], first_new[1:], strict=True)), runs
