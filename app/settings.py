"""All configuration, from environment variables with the LENET_ prefix."""

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Service settings; every field is `LENET_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="LENET_", extra="ignore", frozen=True)

    # Where to serve. Loopback by default: exposing a trainable model is the operator's choice.
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # Model and training.
    device: str = "auto"
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.01
    max_lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10.0

    # Checkpoints.
    checkpoint_dir: Path = Path("./checkpoints")
    autosave_every: Annotated[int, Field(ge=0)] = 0
    autosave_on_shutdown: bool = True
    keep_checkpoints: Annotated[int, Field(ge=1)] = 5

    # Security.
    api_token: SecretStr | None = None

    # Limits, each named in the message of the request that hits it.
    max_batch_size: Annotated[int, Field(ge=1)] = 1024
    max_image_side: Annotated[int, Field(ge=1)] = 256
    max_body_bytes: Annotated[int, Field(ge=1024)] = 64 * MiB
    max_upload_files: Annotated[int, Field(ge=1)] = 64

    # Dynamic batching of predictions: the most images in one forward pass, and how long a
    # gathered batch may wait for more while other requests are already on their way.
    batch_max_images: Annotated[int, Field(ge=1)] = 256
    batch_max_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 1.0

    # Threads torch may use for one operation; unset, torch's default (one per core). On a host
    # busy with other work, fewer can pay off: idle OpenMP workers spin on the event loop's core.
    torch_threads: Annotated[int | None, Field(ge=1)] = None
    access_log: bool = False

    # uvicorn's own protections.
    limit_concurrency: Annotated[int | None, Field(ge=1)] = None
    timeout_keep_alive: Annotated[int, Field(ge=1)] = 5
    timeout_graceful_shutdown: Annotated[int, Field(ge=1)] = 30

    @field_validator("device")
    @classmethod
    def _device_is_known(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda", "mps") or (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            return value
        raise ValueError("device must be auto, cpu, cuda or cuda:N")

    @field_validator("api_token")
    @classmethod
    def _token_is_usable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None  # an empty LENET_API_TOKEN means "no token", not "the empty token"
        if len(value.get_secret_value()) < 8:
            raise ValueError("api_token must be at least 8 characters")
        return value

    @model_validator(mode="after")
    def _lr_within_max_lr(self) -> Self:
        # The optimizer's starting lr obeys the bound every per-step and PUT /optimizer lr does.
        if self.lr > self.max_lr:
            raise ValueError(f"LENET_LR ({self.lr}) must be at most LENET_MAX_LR ({self.max_lr})")
        return self

    @property
    def host_is_loopback(self) -> bool:
        """Whether `host` only listens on this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
