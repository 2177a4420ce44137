"""Checkpoints, restore, start-up loading, retention, a shared folder, a folder that cannot be
written, and safetensors import/export."""

import io
import json
import os
import pickle
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save

from app.checkpoints import CheckpointStore
from models.lenet import Net
from tests.conftest import exported_weights, image_batch, local_net, snapshot


def _train(client: Any, steps: int, seed: int = 0) -> None:
    for index in range(steps):
        images = image_batch(4, seed=seed + index)
        answer = client.post(
            "/train-step", json={"inputs": images.tolist(), "targets": [0, 1, 2, 3]}
        )
        assert answer.status_code == 200, answer.text


def test_save_list_and_restore_weights_step_and_optimizer_state(client: Any) -> None:
    client.put("/optimizer", json={"name": "adam", "lr": 1e-3})
    _train(client, 2)
    saved = client.post("/checkpoints")
    assert saved.status_code == 201, saved.text
    info = saved.json()
    assert (info["version"], info["step"]) == (2, 2)
    assert info["created"].endswith("Z")
    weights_at_save = exported_weights(client)
    _train(client, 3, seed=100)

    listed = client.get("/checkpoints").json()["checkpoints"]
    assert [c["id"] for c in listed] == [info["id"]]
    restored = client.post(f"/checkpoints/{info['id']}/restore")
    assert restored.status_code == 200, restored.text
    assert restored.json() == {"version": 6, "step": 2}  # a new version, the saved step
    for name, value in weights_at_save.items():
        assert torch.equal(exported_weights(client)[name], value), name

    # Adam's moments came back too: the next step equals a local Adam's third step.
    net = local_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for index in (0, 1, 200):
        images = torch.from_numpy(image_batch(4, seed=index))
        optimizer.zero_grad()
        F.cross_entropy(net(images), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
    _train(client, 1, seed=200)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(exported_weights(client)[name], value, rtol=1e-5, atol=1e-6)


def test_unknown_checkpoint_is_404(client: Any) -> None:
    assert client.post("/checkpoints/nope/restore").status_code == 404
    assert client.post("/checkpoints/..%2F..%2Fetc/restore").status_code == 404


def test_restart_loads_the_newest_checkpoint_and_continues_versions(make_client: Any) -> None:
    first = make_client(seed=1)
    _train(first, 3)
    first.post("/checkpoints")
    expected = exported_weights(first)
    first.__exit__(None, None, None)
    second = make_client(seed=2)  # a checkpoint wins over LENET_SEED
    model = second.get("/model").json()
    assert (model["version"], model["step"]) == (3, 3)
    for name, value in expected.items():
        assert torch.equal(exported_weights(second)[name], value), name
    _train(second, 1)
    assert second.get("/model").json()["version"] == 4


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(
    make_client: Any, make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    _train(client, 1)
    good = client.post("/checkpoints").json()
    _train(client, 1)
    bad = client.post("/checkpoints").json()
    client.__exit__(None, None, None)
    weights = make_settings().checkpoint_dir / bad["id"] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit of one weight
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        restarted = make_client()
    assert restarted.get("/model").json()["step"] == good["step"]
    assert any(bad["id"] in record.getMessage() for record in caplog.records)
    assert restarted.post(f"/checkpoints/{bad['id']}/restore").status_code == 422


def test_retention_keeps_the_newest_k_and_autosave_every_n(make_client: Any) -> None:
    client = make_client(autosave_every=2, keep_checkpoints=2)
    _train(client, 7)
    listed = client.get("/checkpoints").json()["checkpoints"]
    assert [c["step"] for c in listed] == [6, 4]


def test_shutdown_saves_when_something_changed(make_client: Any, make_settings: Any) -> None:
    client = make_client(autosave_on_shutdown=True)
    client.__exit__(None, None, None)  # nothing changed: nothing saved
    store = CheckpointStore(make_settings().checkpoint_dir, 5)
    assert store.list() == []
    client = make_client(autosave_on_shutdown=True)
    _train(client, 1)
    client.__exit__(None, None, None)
    assert [info.step for info in store.list()] == [1]


def test_interrupted_writes_are_never_listed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    net = Net()
    info = store.save(dict(net.named_parameters()), {"state": {}, "param_groups": []}, 1, 1, {})
    # What a crash mid-write leaves: a temporary folder with partial files.
    leftover = tmp_path / ".tmp-20990101T000000000000Z-v9-deadbeef"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\x00" * 10)
    assert [c.id for c in store.list()] == [info.id]
    # A folder without meta.json (never produced by save) is skipped, not fatal.
    (tmp_path / "20990101T000000000000Z-v10-cafecafe").mkdir()
    assert [c.id for c in store.list()] == [info.id]


def test_optimizer_state_file_is_loaded_weights_only(tmp_path: Path) -> None:
    """A checkpoint whose optimizer.pt holds an arbitrary pickle is refused, not executed."""
    store = CheckpointStore(tmp_path, keep=5)
    info = store.save(dict(Net().named_parameters()), {"state": {}, "param_groups": []}, 1, 1, {})
    folder = tmp_path / info.id
    evil = io.BytesIO()
    torch.save({"payload": Path("/etc/passwd")}, evil)  # a non-tensor object
    (folder / "optimizer.pt").write_bytes(evil.getvalue())
    meta = json.loads((folder / "meta.json").read_text())
    import hashlib

    meta["sha256"]["optimizer.pt"] = hashlib.sha256(evil.getvalue()).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))
    from app.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="cannot decode"):
        store.load(info.id)


def test_export_import_round_trip(make_client: Any) -> None:
    source = make_client(seed=5)
    exported = source.get("/params/export")
    assert exported.headers["content-type"] == "application/octet-stream"
    target = make_client(seed=6)
    _train(target, 2)
    answer = target.put("/params/import", content=exported.content)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"version": 3, "step": 0}
    for name, value in exported_weights(source).items():
        assert torch.equal(exported_weights(target)[name], value), name
    assert all(
        p["grad"] is None
        for p in target.get("/params", params={"grads": "true"}).json()["parameters"]
    )


def _weights(**changes: Any) -> dict[str, torch.Tensor]:
    tensors = {name: p.detach().clone() for name, p in Net().named_parameters()}
    for name, value in changes.items():
        if value is None:
            del tensors[name.replace("__", ".")]
        else:
            tensors[name.replace("__", ".")] = value
    return tensors


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (save(_weights(fc3__bias=None)), "missing"),
        (save({**_weights(), "fc4.bias": torch.zeros(10)}), "unexpected"),
        (save(_weights(fc3__bias=torch.zeros(11))), "shape"),
        (save(_weights(fc3__bias=torch.zeros(10, dtype=torch.float64))), "dtype"),
        (save(_weights(fc3__bias=torch.full((10,), float("nan")))), "finite"),
        (save(_weights())[:-7], "safetensors"),
        (pickle.dumps({"conv1.weight": [1.0]}), "safetensors"),
        (b"", "safetensors"),
    ],
    ids=["missing", "extra", "shape", "dtype", "nan", "truncated", "pickle", "empty"],
)
def test_bad_imports_are_refused_and_change_nothing(client: Any, body: bytes, message: str) -> None:
    before = snapshot(client)
    answer = client.put("/params/import", content=body)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["detail"]
    assert snapshot(client) == before


def test_torch_save_pickle_is_refused(client: Any) -> None:
    buffer = io.BytesIO()
    torch.save(Net().state_dict(), buffer)
    before = snapshot(client)
    assert client.put("/params/import", content=buffer.getvalue()).status_code == 422
    assert snapshot(client) == before


# ----------------------------------------------------------------- a folder shared with others

OUR_ID_LOOKALIKE = "20990101T000000000000Z-v7-0123abcd"  # newer than any real save


def _foreign_things(folder: Path) -> dict[str, bytes | None]:
    """Fill `folder` with what a shared folder holds besides our checkpoints; returns every path
    made (relative) with its bytes (None for folders), to check byte for byte later."""
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, bytes | None] = {}

    def file(relative: str, data: bytes) -> None:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        made[relative] = data

    def directory(relative: str) -> None:
        (folder / relative).mkdir(parents=True, exist_ok=True)
        made[relative] = None

    directory("lost+found")
    file("backup/model.safetensors", bytes(range(256)) * 3)
    file("backup/meta.json", b'{"id": "backup", "version": 99, "step": 99}')
    file("tmp/notes.txt", b"my notes\n")
    file("notes.txt", b"do not delete\n")
    file("zzz-user/meta.json", b"{}")  # sorts before every id, newest first
    # Named like one of ours, but without meta.json, or with one that is not ours.
    file(f"{OUR_ID_LOOKALIKE}/readme.txt", b"not a checkpoint\n")
    file("20990101T000000000000Z-v8-0123abce/meta.json", b'{"id": "20990101T000000000000Z-v8"}')
    file("20990101T000000000000Z-v9-0123abcf/meta.json", b"not json")
    file("20990101T000000000000Z-v6-0123abc0", b"a file named like an id\n")
    # Hidden names that our leftovers' prefixes start but that are not ours, made long ago.
    file(".tmp-mine/data", b"a user's temporary\n")
    file(".trash-mine/data", b"a user's trash\n")
    file(".tmp-notes.txt", b"a hidden file\n")
    long_ago = time.time() - 3600
    for relative in made:
        os.utime(folder / relative, (long_ago, long_ago))
    return made


def _unchanged(folder: Path, made: dict[str, bytes | None]) -> None:
    for relative, data in made.items():
        path = folder / relative
        if data is None:
            assert path.is_dir(), relative
        else:
            assert path.is_file() and path.read_bytes() == data, relative


def test_foreign_files_and_folders_are_never_touched_listed_or_loaded(
    make_client: Any, make_settings: Any
) -> None:
    folder = make_settings().checkpoint_dir
    made = _foreign_things(folder)
    # An interrupted write of ours, long ago: the one leftover that pruning may delete.
    ours_left_over = folder / ".tmp-20200101T000000000000Z-v1-deadbeef"
    ours_left_over.mkdir()
    (ours_left_over / "model.safetensors").write_bytes(b"\x00" * 10)
    os.utime(ours_left_over, (time.time() - 3600,) * 2)

    client = make_client(keep_checkpoints=2)
    assert client.get("/checkpoints").json() == {"checkpoints": []}
    assert client.get("/model").json()["version"] == 0  # the seed's weights: nothing loaded
    saved = []
    for index in range(6):
        _train(client, 1, seed=index)
        answer = client.post("/checkpoints")
        assert answer.status_code == 201, answer.text
        saved.append(answer.json())
        listed = client.get("/checkpoints").json()["checkpoints"]
        assert listed == saved[::-1][:2]  # keep = 2 means two of ours, the newest
    _unchanged(folder, made)
    assert not ours_left_over.exists()
    assert client.post(f"/checkpoints/{OUR_ID_LOOKALIKE}/restore").status_code == 404
    expected = exported_weights(client)
    client.__exit__(None, None, None)

    restarted = make_client(keep_checkpoints=2)
    assert restarted.get("/model").json()["version"] == saved[-1]["version"]
    for name, value in expected.items():
        assert torch.equal(exported_weights(restarted)[name], value), name
    restored = restarted.post(f"/checkpoints/{saved[-2]['id']}/restore")
    assert restored.status_code == 200, restored.text
    _unchanged(folder, made)
    top_level = {relative.split("/")[0] for relative in made}
    ours = {info["id"] for info in saved[-2:]} | {"lenet-versions.json"}
    # Nothing besides our two checkpoints and the version ledger appeared or vanished.
    assert set(os.listdir(folder)) == top_level | ours


def test_foreign_folders_never_take_a_checkpoints_place(make_client: Any, tmp_path: Path) -> None:
    """The reported case: with `lost+found`, `backup` and `tmp` beside it, one save answered 201
    and the list was then empty, the new checkpoint pruned in their place."""
    folder = tmp_path / "checkpoints"
    for name in ("lost+found", "backup", "tmp"):
        (folder / name).mkdir(parents=True)
    client = make_client(keep_checkpoints=1)
    _train(client, 1)
    saved = client.post("/checkpoints")
    assert saved.status_code == 201, saved.text
    assert client.get("/checkpoints").json()["checkpoints"] == [saved.json()]
    assert all((folder / name).is_dir() for name in ("lost+found", "backup", "tmp"))


def test_a_lookalike_with_our_id_and_meta_of_another_shape_is_not_ours(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    real = store.save(dict(Net().named_parameters()), {"state": {}, "param_groups": []}, 1, 1, {})
    meta = json.loads((tmp_path / real.id / "meta.json").read_bytes())
    variants = {
        "wrong-id": {**meta, "id": OUR_ID_LOOKALIKE[:-1] + "f"},
        "no-format": {k: v for k, v in meta.items() if k != "format"},
        "string-version": {**meta, "version": "7"},
        "no-checksums": {k: v for k, v in meta.items() if k != "sha256"},
        "a-list": [meta],
    }
    for index, (name, body) in enumerate(variants.items()):
        folder = tmp_path / f"20990101T00000000000{index}Z-v7-0123abcd"
        folder.mkdir()
        (folder / "meta.json").write_text(json.dumps(body))
        (folder / "why").write_text(name)
    store.prune()
    assert [info.id for info in store.list()] == [real.id]
    assert all((tmp_path / f"20990101T00000000000{i}Z-v7-0123abcd").is_dir() for i in range(5))
    assert not store.exists("20990101T000000000000Z-v7-0123abcd")


# ----------------------------------------------------------------- a save that cannot write


def test_a_file_where_the_folder_should_be_is_507_and_the_server_still_serves(
    make_client: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file, not a folder\n")
    folder = blocker / "checkpoints"
    client = make_client(checkpoint_dir=folder)
    assert (
        client.post("/predict", json={"inputs": image_batch(1)[0, 0].tolist()}).status_code == 200
    )
    before = snapshot(client)
    answer = client.post("/checkpoints")
    assert answer.status_code == 507, answer.text
    assert str(folder) in answer.json()["detail"]
    # No version can be made durable there, so a change is refused whole rather than numbered
    # with a version that a restart could hand out again (app.versions).
    step = client.post("/train-step", json={"inputs": image_batch(1).tolist(), "targets": [1]})
    assert step.status_code == 507, step.text
    assert str(folder) in step.json()["detail"]
    assert snapshot(client) == before
    assert client.get("/checkpoints").json() == {"checkpoints": []}
    assert blocker.read_bytes() == b"a file, not a folder\n"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount real tmpfs file systems under tmp_path (unmounted after the test).

    Tests run as root, where chmod does not stop a write; a read-only mount and a small tmpfs
    really fail with EROFS and ENOSPC. `mount` needs CAP_SYS_ADMIN: skipped without it (the
    file-in-the-way test above covers the 507 path everywhere)."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _remount(point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(point)], check=True)


def test_a_read_only_folder_is_507_and_nothing_changes(
    make_client: Any, tmpfs: Callable[..., Path]
) -> None:
    point = tmpfs("ro", "16m")
    folder = point / "checkpoints"
    client = make_client(checkpoint_dir=folder)
    _train(client, 1)
    first = client.post("/checkpoints").json()
    files = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    _remount(point, "ro")
    try:
        answer = client.post("/checkpoints")
        assert answer.status_code == 507, answer.text
        assert str(folder) in answer.json()["detail"]
        assert client.get("/checkpoints").json()["checkpoints"] == [first]
        assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == files
        _train(client, 1)  # within the reserved block: training needs no write
    finally:
        _remount(point, "rw")
    assert client.post(f"/checkpoints/{first['id']}/restore").status_code == 200


def test_a_full_disk_is_507_leaves_no_temporary_and_autosave_keeps_stepping(
    make_client: Any, tmpfs: Callable[..., Path]
) -> None:
    point = tmpfs("full", "400k")  # room for one checkpoint (~250 KB) and the ledger, not two
    folder = point / "checkpoints"
    client = make_client(checkpoint_dir=folder, autosave_every=1)
    _train(client, 1)  # autosaved
    (first,) = client.get("/checkpoints").json()["checkpoints"]
    files = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    _train(client, 2)  # their autosaves hit ENOSPC; the steps still answer 200
    assert client.get("/model").json()["step"] == 3
    answer = client.post("/checkpoints")
    assert answer.status_code == 507, answer.text
    assert str(folder) in answer.json()["detail"]
    assert client.get("/checkpoints").json()["checkpoints"] == [first]
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == files
    assert sorted(os.listdir(folder)) == sorted([first["id"], "lenet-versions.json"])
    restored = client.post(f"/checkpoints/{first['id']}/restore")
    assert restored.status_code == 200 and restored.json()["step"] == 1
