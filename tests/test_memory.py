"""Memory stays bounded whatever batch sizes arrive: predictions at every batch size from 1 to
the limit leave the server's resident memory less than 300 MiB above what it was after the
first (the contract's bound). Without size buckets, oneDNN's per-shape kernel cache grew the
process by about 5 MiB per new batch size (2 GB after 342 sizes)."""

import base64
import os
from pathlib import Path

import numpy as np
import pytest

from app.prediction import bucket_size
from tests.server import LiveServer, start_test_server

MiB = 1024 * 1024


def resident_bytes(pid: int) -> int:
    """VmRSS of `pid` and of every process below it (a worker pool counts too)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def test_buckets_are_few_and_never_smaller_than_the_batch() -> None:
    sizes = {bucket_size(n) for n in range(1, 1025)}
    assert len(sizes) == 20 and max(sizes) == 1024
    assert all(n <= bucket_size(n) <= max(2, n * 3 // 2 + 1) for n in range(1, 1025))


def test_padding_to_a_bucket_answers_each_image_as_alone() -> None:
    import torch

    from app.prediction import predict_batch
    from models.lenet import build_net

    net = build_net(0)
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((5, 1, 32, 32))).float()
    padded = predict_batch(net, images, torch.device("cpu"), version=3, step=2)
    assert padded.logits.shape == (5, 10) and padded.version == 3
    with torch.inference_mode():
        np.testing.assert_allclose(padded.logits, net(images).numpy(), atol=1e-5)


def test_small_batches_run_on_aten_and_match_onednn() -> None:
    """Batches of up to ATEN_MAX_BATCH images skip oneDNN (faster there), give the logits the
    oneDNN pass gives, and leave the process-wide switch as they found it."""
    import torch

    from app.prediction import ATEN_MAX_BATCH, Forward
    from models.lenet import build_net

    net = build_net(0)
    forward = Forward(net, torch.device("cpu"))
    images = torch.from_numpy(np.random.default_rng(1).standard_normal((16, 1, 32, 32))).float()
    seen: list[bool] = []
    hook = net.conv1.register_forward_pre_hook(
        lambda *_: seen.append(torch.backends.mkldnn.enabled)
    )
    try:
        small = forward.logits(images[:ATEN_MAX_BATCH])
        large = forward.logits(images)
    finally:
        hook.remove()
    assert seen == [False, True] and torch.backends.mkldnn.enabled
    np.testing.assert_allclose(small, large[:ATEN_MAX_BATCH], atol=1e-5)
    with torch.inference_mode():
        np.testing.assert_allclose(small, net(images[:ATEN_MAX_BATCH]).numpy(), atol=1e-5)


@pytest.mark.server
@pytest.mark.slow
def test_every_batch_size_keeps_memory_bounded(tmp_path: Path) -> None:
    server: LiveServer = start_test_server(tmp_path, max_batch_size=1024)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((1024, 1, 32, 32)).astype(np.float32)
    try:
        with server.client() as http:
            first = None
            for size in range(1, 1025):
                batch = pool[:size]
                tensor = {
                    "shape": list(batch.shape),
                    "dtype": "float32",
                    "data": base64.b64encode(batch.tobytes()).decode(),
                }
                answer = http.post("/predict", json={"tensor": tensor})
                assert answer.status_code == 200, answer.text
                assert len(answer.json()["predictions"]) == size
                if first is None:
                    first = resident_bytes(server.process.pid)
            assert first is not None
            grown = resident_bytes(server.process.pid) - first
    finally:
        server.stop()
    assert grown < 300 * MiB, f"resident memory grew by {grown / MiB:.0f} MiB"
