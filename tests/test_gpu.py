"""The GPU path, exercised on the CPU wherever it can be (a dry run), with CUDA twins that skip
without a GPU: the host-side softmax and argmax, the buckets' warm-up, bfloat16 inference, the
start-up facts, device failures (readiness and the exit of `lenet serve`), the image's torch
variant, and CUDA graphs after training."""

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app import device as device_module
from app.device import configure, device_facts, is_device_error, torch_variant, variant_matches
from app.prediction import (
    ATEN_MAX_BATCH,
    Forward,
    bucket_size,
    bucket_sizes,
    predict_batch,
    softmax,
)
from app.settings import Settings
from models.lenet import INPUT_SHAPE, build_net
from tests.conftest import image_batch, step_body
from tests.server import free_port

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
INJECTED = "CUDA error: an illegal memory access was encountered (injected by the test)"


def torch_prediction(model: torch.nn.Module, images: torch.Tensor) -> tuple[Any, Any, Any]:
    """What predict_batch answered before it moved softmax and argmax to the host, with the
    convolutions it picks for the batch's size (ATen's up to ATEN_MAX_BATCH, else oneDNN's)."""
    torch.backends.mkldnn.enabled = images.shape[0] > ATEN_MAX_BATCH
    try:
        with torch.inference_mode():
            logits = model(images)
    finally:
        torch.backends.mkldnn.enabled = True
    with torch.inference_mode():
        return (
            logits.numpy(),
            torch.softmax(logits, dim=1).numpy(),
            torch.argmax(logits, dim=1).numpy(),
        )


# --- one copy back, softmax and argmax on the host ---------------------------------------------


def test_host_softmax_and_argmax_equal_torch() -> None:
    """numpy's softmax is within 1e-6 of torch's, large logits and ties included."""
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((257, 10)) * 30).astype(np.float32)
    logits[0] = 5.0  # a row of ties: both take the first index
    logits[1, 3] = logits[1, 7] = logits[1].max() + 1
    expected = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_allclose(softmax(logits), expected, atol=1e-6, rtol=0)
    assert softmax(logits).dtype == np.float32
    assert (logits.argmax(axis=1) == torch.from_numpy(logits).argmax(dim=1).numpy()).all()


@pytest.mark.parametrize("count", [1, 3, 5, 17, 300])
def test_predict_batch_answers_as_before_on_the_cpu(count: int) -> None:
    """The same logits bit for bit, probabilities within 1e-6, the same classes."""
    model = build_net(0)
    images = torch.from_numpy(image_batch(count, seed=count))
    answer = predict_batch(model, images, torch.device("cpu"), 7, 3)
    padded = torch.cat([images, images.new_zeros(bucket_size(count) - count, *INPUT_SHAPE)])
    logits, probabilities, predictions = (a[:count] for a in torch_prediction(model, padded))
    assert answer.logits.tobytes() == logits.tobytes()
    np.testing.assert_allclose(answer.probabilities, probabilities, atol=1e-6, rtol=0)
    assert answer.predictions.tolist() == predictions.tolist()
    assert (answer.version, answer.step, answer.logits.shape) == (7, 3, (count, 10))


def test_bucket_sizes_are_the_twenty_shapes() -> None:
    sizes = bucket_sizes(1024)
    assert len(sizes) == 20 and sizes[:8] == [1, 2, 3, 4, 6, 8, 12, 16] and sizes[-1] == 1024
    assert all(bucket_size(n) in sizes for n in range(1, 1025))
    assert bucket_sizes(1) == [1] and bucket_sizes(5) == [1, 2, 3, 4, 6]


def test_pinned_staging_is_for_cuda_only() -> None:
    """On the CPU the padded batch is an ordinary tensor; nothing is pinned."""
    forward = Forward(build_net(0), torch.device("cpu"))
    forward.logits(torch.zeros(3, *INPUT_SHAPE))
    assert not forward._pinned and not forward._staging and not forward.cuda_graphs
    # Graphs asked for on the CPU are off: they are a CUDA feature.
    assert not Forward(build_net(0), torch.device("cpu"), cuda_graphs=True).cuda_graphs


# --- start-up: facts, warm-up ------------------------------------------------------------------


def test_model_shows_torch_cuda_and_the_device(client: TestClient) -> None:
    body = client.get("/model").json()
    assert body["torch_version"] == torch.__version__
    assert body["cuda_version"] == torch.version.cuda  # None (null) on a CPU build
    assert body["device_name"] == device_facts(torch.device(body["device"]))["device_name"]
    assert body["device_name"]
    assert body["inference_dtype"] == "float32"


def warm_up_line(caplog: pytest.LogCaptureFixture) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warm-up:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_start_up_logs_the_facts_and_warms_one_bucket_on_the_cpu(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lenet.engine")
    make_client(device="cpu")
    facts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("torch ")]
    assert facts == [
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, on cpu "
        f"({device_facts(torch.device('cpu'))['device_name']}), predictions in float32"
    ]
    assert warm_up_line(caplog).startswith("warm-up: 1 batch size(s) up to 1 in ")


def test_every_bucket_warms_up_on_the_cpu_when_asked(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lenet.engine")
    client = make_client(device="cpu", warmup_buckets="on", max_batch_size=100)
    assert warm_up_line(caplog).startswith("warm-up: 16 batch size(s) up to 256 in ")
    assert client.get("/readyz").status_code == 200


def test_configure_makes_cudnn_deterministic_on_cuda_only() -> None:
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
        configure(torch.device("cpu"))
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)
        configure(torch.device("cuda"))  # setting the flags needs no GPU
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (True, False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


# --- bfloat16 inference --------------------------------------------------------------------------


def test_bfloat16_inference_is_close_and_training_stays_float32(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    plain = make_client()
    bf16 = make_client(inference_dtype="bfloat16", checkpoint_dir=tmp_path / "bf16")
    assert bf16.get("/model").json()["inference_dtype"] == "bfloat16"
    images = image_batch(6).tolist()
    exact = plain.post("/predict", json={"inputs": images}).json()
    rough = bf16.post("/predict", json={"inputs": images}).json()
    np.testing.assert_allclose(rough["outputs"], exact["outputs"], atol=3e-2)
    assert rough["outputs"] != exact["outputs"]  # it did run in bfloat16
    np.testing.assert_allclose(np.sum(rough["probabilities"], axis=1), 1, atol=1e-6)
    # Training never uses the inference dtype: the same step gives the same loss and weights.
    assert (
        plain.post("/train-step", json=step_body()).json()["loss"]
        == (bf16.post("/train-step", json=step_body()).json()["loss"])
    )
    assert plain.get("/params/export").content == bf16.get("/params/export").content


def test_inference_dtype_is_validated() -> None:
    with pytest.raises(ValueError, match="inference_dtype"):
        Settings(inference_dtype="float16")  # type: ignore[arg-type]


# --- device failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "device_error"),
    [
        (torch.AcceleratorError("CUDA error: device-side assert triggered"), True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("CUDA driver error: unknown error"), True),
        (RuntimeError("cuBLAS failed: CUBLAS_STATUS_EXECUTION_FAILED"), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("CUDA error: not a RuntimeError"), False),
    ],
)
def test_device_errors_are_told_from_other_errors(error: Exception, device_error: bool) -> None:
    assert is_device_error(error) is device_error


class InjectedFault:
    """A forward hook on the served model's first layer (run by predictions and training alike)
    that raises a CUDA error on the torch thread, where a failed kernel would: `times` calls, or
    from now on when `times` is None (a sticky error)."""

    def __init__(self, times: int | None) -> None:
        self.times = times
        self.raised = 0

    def __call__(self, *_: Any) -> None:
        if self.times is None or self.raised < self.times:
            self.raised += 1
            raise RuntimeError(INJECTED)


@pytest.fixture
def failing_client(make_client: Callable[..., TestClient]) -> Iterator[tuple[TestClient, Any]]:
    """A client whose engine records `on_device_failed` calls instead of stopping pytest."""
    client = make_client(exit_on_device_failure=False)
    engine = client.app.state.engine  # type: ignore[attr-defined]
    calls: list[str] = []
    engine.on_device_failed = calls.append
    yield client, calls


def test_a_device_error_that_goes_away_fails_one_request(
    failing_client: tuple[TestClient, list[str]],
) -> None:
    client, calls = failing_client
    engine = client.app.state.engine  # type: ignore[attr-defined]
    hook = engine.model.conv1.register_forward_hook(InjectedFault(times=1))
    try:
        answer = client.post("/predict", json={"inputs": image_batch(2).tolist()})
        assert answer.status_code == 503
        assert INJECTED in answer.json()["detail"]
        assert client.get("/readyz").status_code == 200  # the probe found the device answering
        assert client.post("/predict", json={"inputs": image_batch(2).tolist()}).status_code == 200
    finally:
        hook.remove()
    assert calls == [] and engine.device_failed is None


def test_a_sticky_device_error_makes_the_service_not_ready(
    failing_client: tuple[TestClient, list[str]],
) -> None:
    client, calls = failing_client
    engine = client.app.state.engine  # type: ignore[attr-defined]
    fault = InjectedFault(times=None)
    engine.model.conv1.register_forward_hook(fault)
    answer = client.post("/train-step", json=step_body())
    assert answer.status_code == 503, answer.text
    assert calls == [INJECTED]  # the server is told to stop, once
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": f"device failed: {INJECTED}"}
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/healthz").status_code == 200  # alive, so it can drain
    # Nothing more runs on the broken device: refused before any torch work.
    raised = fault.raised
    assert client.post("/predict", json={"inputs": image_batch(1).tolist()}).status_code == 503
    assert client.get("/params").status_code == 503
    assert fault.raised == raised and calls == [INJECTED]


FAULTY_SERVER = f"""
import sys
from models import lenet

broken = False


def failing(forward):
    # A sticky CUDA error from the first batch whose first pixel is 1234.5 on.
    def call(net, x):
        global broken
        broken = broken or float(x.flatten()[0]) == 1234.5
        if broken:
            raise RuntimeError({INJECTED!r})
        return forward(net, x)

    return call


# Training runs the module, predictions `inference_forward`: both fail (before app imports it).
lenet.Net.forward = failing(lenet.Net.forward)
lenet.inference_forward = failing(lenet.inference_forward)
from app.cli import main

sys.exit(main(["serve"]))
"""


@pytest.mark.server
def test_lenet_serve_exits_with_status_4_when_the_device_fails(tmp_path: Path) -> None:
    """The real server: a sticky CUDA error in a request, then a graceful stop and status 4."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENET_")}
    env.update(
        LENET_HOST="127.0.0.1",
        LENET_PORT=str(port),
        LENET_DEVICE="cpu",
        LENET_SEED="0",
        LENET_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        LENET_AUTOSAVE_ON_SHUTDOWN="true",
    )
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", FAULTY_SERVER], env=env, cwd=ROOT, stdout=log, stderr=log
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.post(f"{url}/train-step", json=step_body(), timeout=10).status_code == 200
        images = image_batch(1)
        images[0, 0, 0, 0] = 1234.5
        answer = httpx.post(f"{url}/predict", json={"inputs": images.tolist()}, timeout=10)
        assert answer.status_code == 503
        assert process.wait(30) == 4
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log_text = log_path.read_text()
    assert "failed and does not answer any more" in log_text
    assert f"exiting with status 4: the device failed ({INJECTED})" in log_text
    # A trained model, but no checkpoint written from a broken device.
    assert "no checkpoint on shutdown: the device failed" in log_text
    assert not list((tmp_path / "checkpoints").glob("*.safetensors"))


# --- the image's torch build ----------------------------------------------------------------------


def test_torch_variant_names_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    assert torch_variant() == ("cpu" if torch.version.cuda is None else torch_variant())
    for cuda_version, variant in (("12.6", "cu126"), ("12.8", "cu128"), ("13.0", "cu130")):
        monkeypatch.setattr(torch.version, "cuda", cuda_version)
        assert torch_variant() == variant
        assert variant_matches(variant)
        assert not variant_matches("cpu")
    assert variant_matches("cuda")  # the PyPI wheel: any CUDA 13
    monkeypatch.setattr(torch.version, "cuda", "13.2")
    assert variant_matches("cu130") and not variant_matches("cu128")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert torch_variant() == "cpu" and variant_matches("cpu") and not variant_matches("cu130")


def test_asking_for_cuda_without_it_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError, match="CPU-only build"):
        device_module.resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(RuntimeError, match="TORCH_VARIANT=cu126 or cu128"):
        device_module.resolve_device("cuda")


# --- CUDA twins ----------------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
def test_graphed_prediction_after_training_equals_eager() -> None:
    """A CUDA graph captured before an optimizer step answers as the eager pass after it: the
    step updates the weights in place, where the graph reads them."""
    device = torch.device("cuda")
    model = build_net(0).to(device)
    graphed = Forward(model, device, cuda_graphs=True)
    eager = Forward(model, device, cuda_graphs=False)
    images = torch.from_numpy(image_batch(5))
    before = graphed.logits(images)
    np.testing.assert_allclose(before, eager.logits(images), atol=1e-6, rtol=0)
    assert graphed._graphs.keys() == {6}  # captured for the bucket of 5 images
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(
        model(images.to(device)), torch.arange(5, device=device)
    )
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    after = graphed.logits(images)
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, eager.logits(images), atol=1e-6, rtol=0)
    assert graphed._staging[6].is_pinned()


@pytest.mark.cuda
@cuda
def test_cuda_service_warms_every_bucket_and_graphs_follow_training(
    make_client: Callable[..., TestClient], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lenet.engine")
    graphed = make_client(device="cuda", cuda_graphs="auto")
    assert warm_up_line(caplog).startswith("warm-up: 20 batch size(s) up to 1024 in ")
    eager = make_client(device="cuda", cuda_graphs="off", checkpoint_dir=tmp_path / "eager")
    body = graphed.get("/model").json()
    assert body["cuda_version"] == torch.version.cuda and body["device"].startswith("cuda")
    assert body["device_name"] == torch.cuda.get_device_name(0)
    images = {"inputs": image_batch(7).tolist()}
    for _ in range(2):
        ours, theirs = (c.post("/predict", json=images).json() for c in (graphed, eager))
        np.testing.assert_allclose(ours["outputs"], theirs["outputs"], atol=1e-6, rtol=0)
        assert ours["predictions"] == theirs["predictions"]
        for client in (graphed, eager):
            assert client.post("/train-step", json=step_body()).status_code == 200


# --- scripts/gpu_check.sh ------------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.slow
def test_gpu_check_cpu_dry_run_passes(tmp_path: Path) -> None:
    """The GPU machine's one command, every step on the CPU with --quick, so it cannot rot."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENET_")}
    env["PYTHON"] = sys.executable
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-dry-run", "--quick", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    summary = (tmp_path / "summary.txt").read_text()
    assert result.returncode == 0, summary + result.stderr[-2000:]
    assert summary.startswith("gpu_check CPU DRY RUN")
    steps = [line for line in summary.splitlines()[1:] if not line.startswith("gpu_check:")]
    assert len(steps) == 6 and all(": PASS (" in line for line in steps), summary
    assert "(bit for bit)" in summary and "auto: ready on cpu" in summary
    assert "gpu_check: all passed" in summary
    assert (tmp_path / "bench-cpu.md").read_text().count("| lenet healthz GET") == 3
