"""Checkpoints, restore, start-up loading, retention, and safetensors import/export."""

import io
import json
import pickle
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
