"""app.settings: the contract's defaults, and validators that refuse unsafe values."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import MiB, Settings

TOKEN = "s3cret-token-0123456789"


@pytest.fixture
def no_lenet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LENET_ variable from the machine running the tests (a GPU box sets LENET_DEVICE)."""
    for name in list(os.environ):
        if name.startswith("LENET_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_contracts(no_lenet_env: None) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.host == "127.0.0.1" and settings.host_is_loopback
    assert settings.device == "auto"
    assert settings.seed is None
    assert settings.checkpoint_dir == Path("./checkpoints")
    assert settings.api_token is None
    assert settings.lr == 0.01  # the tutorial's SGD(net.parameters(), lr=0.01)
    assert settings.max_lr == 10.0
    assert (settings.max_batch_size, settings.max_image_side) == (1024, 256)
    assert settings.max_body_bytes == 64 * MiB
    assert settings.autosave_every == 0
    assert settings.autosave_on_shutdown is True
    assert settings.keep_checkpoints == 5


def test_settings_come_from_lenet_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENET_SEED", "7")
    monkeypatch.setenv("LENET_DEVICE", " CPU ")
    monkeypatch.setenv("LENET_MAX_BATCH_SIZE", "12")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.seed, settings.device, settings.max_batch_size) == (7, "cpu", 12)


def test_an_empty_token_means_none_and_a_short_one_is_refused() -> None:
    assert Settings(api_token="").api_token is None  # empty means unset
    assert Settings(api_token=TOKEN).api_token is not None
    assert Settings(api_token="12345678").api_token is not None  # exactly 8 is enough
    with pytest.raises(ValueError, match="8 characters"):
        Settings(api_token="short")
    with pytest.raises(ValidationError, match="8 characters"):
        Settings(api_token="1234567")
    assert TOKEN not in repr(Settings(api_token=TOKEN))


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps", "CUDA:1"])
def test_known_devices_are_accepted(device: str) -> None:
    assert Settings(device=device).device == device.lower()


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "cuda:-1", "tpu", "", "cpu:0"])
def test_unknown_devices_are_refused(device: str) -> None:
    with pytest.raises(ValidationError, match="device must be auto, cpu, cuda or cuda:N"):
        Settings(device=device)


@pytest.mark.parametrize(
    "values",
    [
        {"lr": 0},
        {"lr": -0.1},
        {"lr": float("nan")},
        {"max_lr": 0},
        {"max_lr": float("inf")},
        {"port": 65536},
        {"seed": -1},
        {"max_batch_size": 0},
        {"max_body_bytes": 1023},
        {"keep_checkpoints": 0},
        {"batch_max_wait_ms": 1001},
        {"log_level": "verbose"},
    ],
)
def test_unsafe_values_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)  # type: ignore[arg-type]


def test_lr_above_max_lr_is_refused_naming_both() -> None:
    # A default learning rate the service itself would refuse as a per-step lr.
    with pytest.raises(ValidationError, match="LENET_LR.*LENET_MAX_LR"):
        Settings(lr=20.0)
    with pytest.raises(ValidationError, match="LENET_LR.*LENET_MAX_LR"):
        Settings(lr=0.5, max_lr=0.1)


def test_lr_at_max_lr_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(lr=10.0).lr == 10.0
    monkeypatch.setenv("LENET_LR", "0.5")
    monkeypatch.setenv("LENET_MAX_LR", "0.5")
    assert Settings(_env_file=None).max_lr == 0.5  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.org", False),
    ],
)
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert Settings(host=host).host_is_loopback is loopback
