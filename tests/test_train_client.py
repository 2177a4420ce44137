"""`lenet train`: the client's pieces, and whole runs against a real, token-protected server."""

import base64
import math
import re
from collections.abc import Iterator

import numpy as np
import pytest

from app.cli import main
from app.datasets import load_digits
from app.train_client import optimizer_body, scheduled_lr, tensor_field
from tests.conftest import SEED, TEST_DEVICE
from tests.server import LiveServer, free_port, start_test_server

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


def test_tensor_field_is_little_endian_float32_with_a_channel() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4) / 7
    field = tensor_field(images)
    assert field["shape"] == [2, 1, 3, 4]
    assert field["dtype"] == "float32"
    decoded = np.frombuffer(base64.b64decode(field["data"]), dtype="<f4").reshape(2, 1, 3, 4)
    np.testing.assert_array_equal(decoded[:, 0], images.astype(np.float32))


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
