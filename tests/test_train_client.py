"""`lenet train` (lenet_client.train and lenet_client.cli): the pieces, the arguments, the
output modes and exit statuses, and whole runs against a real, token-protected server."""

import fcntl
import json
import math
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.optimizers import OPTIMIZER_NAMES
from lenet_client.datasets import load_digits
from lenet_client.routes import tensor_field
from lenet_client.train import optimizer_body, scheduled_lr
from tests.conftest import SEED, TEST_DEVICE
from tests.server import LiveServer, free_port, start_test_server
from tests.test_datasets import write_mnist

TOKEN = "train-client-test-token"
DIGITS_STEPS_PER_EPOCH = math.ceil(1438 / 32)  # 1438 training images, default batch size 32
ACCURACY_LINE = re.compile(r"held-out accuracy: (\d\.\d{4}) \((\d+)/(\d+)\)")

# ---------------------------------------------------------------- pieces


def test_optimizer_body_defaults_and_momentum() -> None:
    assert optimizer_body("sgd", None, None) == {"name": "sgd", "lr": 0.03, "momentum": 0.9}
    assert optimizer_body("sgd", 0.1, 0.0) == {"name": "sgd", "lr": 0.1, "momentum": 0.0}
    assert optimizer_body("adam", None, None) == {"name": "adam", "lr": 0.001}
    assert optimizer_body("rmsprop", 0.01, 0.5) == {"name": "rmsprop", "lr": 0.01, "momentum": 0.5}
    with pytest.raises(ValueError, match="--momentum does not apply to adamw"):
        optimizer_body("adamw", None, 0.9)


def test_scheduled_lr_warms_up_then_decays_without_reaching_zero() -> None:
    rates = [scheduled_lr(0.1, step, 100, 10) for step in range(100)]
    assert rates[0] == pytest.approx(0.01)
    assert rates[9] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert 0 < rates[-1] < 1e-3


# ---------------------------------------------------------------- usage errors, no server


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "mnist"], "--dataset mnist needs --mnist DIR"),
        (["--dataset", "folder"], "--dataset folder needs --folder DIR"),
        (["--mnist", "/nonexistent/mnist"], "/nonexistent/mnist: not a directory"),
        (["--optimizer", "adam", "--momentum", "0.9"], "--momentum does not apply to adam"),
    ],
)
def test_unusable_arguments_exit_2_before_any_request(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request would fail with 1
    assert main(["train", "--url", url, *argv]) == 2
    assert f"lenet train: error: {message}" in capsys.readouterr().err


def test_argument_parser_refuses_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--epochs", "0"], ["--eval-fraction", "1.5"], ["--augment", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", *argv])
        assert exit_info.value.code == 2
    assert "must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "localhost:8000", "ftp://127.0.0.1/", "http//x"])
def test_a_url_without_http_scheme_exits_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--url", url])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --url: must be an http:// or https:// address such as" in err
    assert repr(url) in err


def test_quiet_and_json_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--quiet", "--json"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in (
        "--url URL the service's address (default: http://127.0.0.1:8000)",
        "(default: 30)",
        "(default: 32)",
        "(default: 0.2)",
        "(default: cosine)",
        "(default: 2)",
        "--optimizer {" + ",".join(OPTIMIZER_NAMES) + "}",
        "optimizer (default: sgd)",
        # the client's defaults, read from app.optimizers
        "learning rate (default: sgd 0.03, adam 0.001, adamw 0.001, rmsprop 0.001)",
        "(default: sgd 0.9, rmsprop 0)",
        "--quiet",
        "--json",
        "pip install 'lenet-serve[train]'",
    ):
        assert default in text, default
    assert "(default: None)" not in text and "(default: False)" not in text


def test_connection_refused_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["train", "--url", url, "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert f"cannot connect to {url}" in err
    assert "is `lenet serve` running there?" in err


# ---------------------------------------------------------------- against a real server


@pytest.fixture(scope="module")
def protected_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One seeded, token-protected server shared by this module's end-to-end tests."""
    base = tmp_path_factory.mktemp("train-client")
    server = start_test_server(base, seed=SEED, device=TEST_DEVICE, api_token=TOKEN)
    yield server
    server.stop()


def server_step(server: LiveServer) -> int:
    with server.client() as http:
        step: int = http.get("/model").json()["step"]
        return step


@pytest.mark.server
@pytest.mark.slow
def test_train_on_digits_takes_the_steps_and_reports_real_accuracy(
    protected_server: LiveServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LENET_API_TOKEN", TOKEN)  # the default of --token
    before = server_step(protected_server)
    assert main(["train", "--url", protected_server.url, "--epochs", "4"]) == 0
    assert server_step(protected_server) - before == 4 * DIGITS_STEPS_PER_EPOCH
    out = capsys.readouterr().out
    assert "digits: 1438 training and 359 held-out images of 32x32" in out
    assert "epoch 4/4:" in out
    match = ACCURACY_LINE.search(out)
    assert match, out
    accuracy, correct, total = float(match[1]), int(match[2]), int(match[3])
    assert total == 359
    # Measured: 4 epochs from seeded weights end near 0.93; untrained weights score about 0.1.
    assert accuracy > 0.8, out
    # The printed figure is what the server answers for the held-out images.
    held_out = load_digits()
    with protected_server.client() as http:
        optimizer = http.get("/optimizer").json()
        answer = http.post("/predict", json={"tensor": tensor_field(held_out.eval_images)}).json()
    assert optimizer["name"] == "sgd" and optimizer["lr"] == 0.03 and optimizer["momentum"] == 0.9
    assert int((np.asarray(answer["predictions"]) == held_out.eval_labels).sum()) == correct


@pytest.mark.server
@pytest.mark.parametrize(
    ("token", "message"),
    [
        (
            None,
            "401 Unauthorized: the server requires a token: pass --token or set LENET_API_TOKEN",
        ),
        ("not-the-token", "401 Unauthorized: the token was refused"),
    ],
)
def test_a_protected_server_refuses_training_without_its_token(
    protected_server: LiveServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    token: str | None,
    message: str,
) -> None:
    monkeypatch.delenv("LENET_API_TOKEN", raising=False)
    before = server_step(protected_server)
    argv = ["train", "--url", protected_server.url, "--epochs", "1"]
    assert main(argv + (["--token", token] if token else [])) == 1
    err = capsys.readouterr().err
    assert "lenet train: error: PUT /optimizer: " + message in err
    assert server_step(protected_server) == before


@pytest.mark.server
def test_a_refused_request_shows_the_servers_detail(
    protected_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    before = server_step(protected_server)
    # All 1438 training images in one batch: over the server's 1024-image limit.
    argv = ["train", "--url", protected_server.url, "--token", TOKEN, "--batch-size", "2000"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert re.search(r"lenet train: error: POST /\S+: 422 .*1438 images.*LENET_MAX_BATCH_SIZE", err)
    assert server_step(protected_server) == before


# ---------------------------------------------------------------- output for scripts


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MNIST (12 training, 5 test images): runs of a few steps."""
    directory = tmp_path_factory.mktemp("mnist")
    write_mnist(directory)
    return directory


def tiny_run(server: LiveServer, mnist: Path, *extra: str) -> list[str]:
    """`lenet train` arguments for 2 epochs of 3 steps on the tiny MNIST."""
    return [
        "train",
        "--url",
        server.url,
        "--token",
        TOKEN,
        "--mnist",
        str(mnist),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        *extra,
    ]


@pytest.mark.server
def test_json_prints_one_object_per_epoch_then_a_summary(
    protected_server: LiveServer, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = server_step(protected_server)
    assert main(tiny_run(protected_server, mnist_dir, "--json")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["event"] for line in lines] == ["epoch", "epoch", "summary"]
    first, second, summary = lines
    assert (first["epoch"], second["epoch"], first["epochs"]) == (1, 2, 2)
    assert (first["step"], second["step"]) == (before + 3, before + 6)
    assert second["seconds"] >= first["seconds"] > 0
    for epoch in (first, second):
        assert epoch["total"] == 5 and epoch["held_out_accuracy"] == epoch["correct"] / 5
        assert math.isfinite(epoch["train_loss"]) and 0 <= epoch["train_accuracy"] <= 1
    assert summary["steps"] == 6 and summary["first_step"] == before
    assert summary["last_step"] == before + 6 == server_step(protected_server)
    assert summary["accuracy"] == summary["correct"] / summary["total"] == second["correct"] / 5
    assert summary["dataset"] == "mnist" and summary["optimizer"]["name"] == "sgd"
    assert summary["optimizer"]["momentum"] == 0.9 and summary["version"] == second["version"]


@pytest.mark.server
def test_quiet_prints_only_the_result_line(
    protected_server: LiveServer, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = server_step(protected_server)
    assert main(tiny_run(protected_server, mnist_dir, "--quiet")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    (line,) = captured.out.splitlines()
    match = ACCURACY_LINE.match(line)
    assert match and int(match[3]) == 5, line
    assert "after 6 steps in " in line and f"(server step {before + 6}, version " in line


def run_in_terminal(argv: list[str], stderr_tty: bool) -> tuple[int, str, str]:
    """`lenet` in a subprocess whose stderr is a pseudo-terminal or a pipe: (status, out, err)."""
    code = "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, *argv]
    root = Path(__file__).resolve().parents[1]
    if not stderr_tty:
        done = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=120)
        return done.returncode, done.stdout, done.stderr
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, where tqdm draws nothing: give it 100.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=follower, cwd=root, text=True
    )
    os.close(follower)
    terminal = b""
    while True:  # drain the terminal until the child closes it
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child's end is closed
            break
        if not chunk:
            break
        terminal += chunk
    os.close(leader)
    out, _ = process.communicate(timeout=120)
    return process.returncode, out, terminal.decode(errors="replace")


@pytest.mark.server
@pytest.mark.parametrize("stderr_tty", [True, False])
def test_a_progress_bar_only_on_a_terminal(
    protected_server: LiveServer, mnist_dir: Path, stderr_tty: bool
) -> None:
    status, out, err = run_in_terminal(tiny_run(protected_server, mnist_dir), stderr_tty)
    assert status == 0, err
    assert "mnist: 12 training and 5 held-out images of 28x28" in out
    assert "epoch 2/2:" in out and ACCURACY_LINE.search(out)
    if stderr_tty:
        assert "training:" in err and "/6 [" in err, err  # a bar of the run's 6 steps
    else:
        assert err == ""
    assert "training:" not in out  # the bar never goes to stdout


# ---------------------------------------------------------------- what each command imports


@pytest.mark.server
def test_lenet_train_runs_without_torch(protected_server: LiveServer, mnist_dir: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        from app.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    argv = tiny_run(protected_server, mnist_dir, "--quiet")
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert ACCURACY_LINE.match(done.stdout), done.stdout


@pytest.mark.server
def test_lenet_serve_runs_without_scikit_learn_or_tqdm(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        for name in ("sklearn", "tqdm"):
            sys.modules[name] = None  # any import of them now fails
        from app.cli import main
        sys.exit(main(["serve"]))
        """
    )
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("LENET_")}
    env.update(
        LENET_HOST="127.0.0.1",
        LENET_PORT=str(port),
        LENET_DEVICE=TEST_DEVICE,
        LENET_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        LENET_AUTOSAVE_ON_SHUTDOWN="false",
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        server.wait_ready()
        with server.client() as http:
            assert http.post("/predict", json={"inputs": [[0.0] * 8] * 8}).status_code == 200
    finally:
        # uvicorn re-raises SIGTERM after its graceful shutdown
        assert server.stop() in (0, -signal.SIGTERM), server.log()
