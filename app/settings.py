"""All configuration, from environment variables with the LENET_ prefix."""

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024

# A DNS name (letters, digits, hyphens, dots) or an IPv4 address; IPv6 goes in brackets.
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_DEFAULT_PORTS = {"http": 80, "https": 443}

# What one process does (see API.md, "Running on more than one machine").
Role = Literal["all", "trainer", "predictor"]


def normalize_host_name(text: str) -> str:
    """`text` as a Host name (lower case, IPv6 in brackets); ValueError if it is not one."""
    name = text.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        ipaddress.IPv6Address(name[1:-1])  # raises ValueError
        return name
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not a host name (no scheme, port or path; IPv6 in [])")
    return name


def normalize_origin(text: str) -> str:
    """`text` as a web origin `scheme://host[:port]` (lower case, default port left out), the
    form browsers send in `Origin`; ValueError if it is not one."""
    parts = urlsplit(text.strip())
    if parts.scheme not in _DEFAULT_PORTS or parts.path or parts.query or parts.fragment:
        raise ValueError(f"{text!r} is not an origin: http(s)://host[:port], without a path")
    if parts.username is not None or parts.password is not None or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin: http(s)://host[:port], without a path")
    host = parts.hostname
    host = normalize_host_name(f"[{host}]" if ":" in host else host)
    port = parts.port  # raises ValueError past 65535 or when not a number
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _comma_separated(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


class Settings(BaseSettings):
    """Service settings; every field is `LENET_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="LENET_", extra="ignore", frozen=True)

    # Where to serve. Loopback by default: exposing a trainable model is the operator's choice.
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    # KServe v2 over gRPC on this port of `host`, beside HTTP; off when unset (0: any free port).
    grpc_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # One JSON object a line (time, level, logger, message, request_id, extras), or plain text.
    log_format: Literal["text", "json"] = "text"

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
    # Host names served (DNS rebinding); unset: loopback names on a loopback address, any
    # elsewhere. "*" serves any.
    allowed_hosts: Annotated[tuple[str, ...] | None, NoDecode] = None
    # Origins besides the server's own whose pages may send requests that change anything.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # Time from the end of a request's headers to the end of its body (408 past it), and, under
    # `lenet serve`, from a connection's first byte (or a request's) to the end of the headers.
    body_timeout_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 30.0
    header_timeout_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 10.0

    # Limits, each named in the message of the request that hits it.
    max_batch_size: Annotated[int, Field(ge=1)] = 1024
    max_image_side: Annotated[int, Field(ge=1)] = 256
    max_body_bytes: Annotated[int, Field(ge=1024)] = 64 * MiB
    max_upload_files: Annotated[int, Field(ge=1)] = 64

    # Dynamic batching of predictions: the most images in one forward pass, and how long a
    # gathered batch may wait for more while other requests are already on their way.
    batch_max_images: Annotated[int, Field(ge=1)] = 256
    batch_max_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 1.0

    # The GPU (and the CPU) path of predictions; see app.prediction and the README's GPU section.
    # bfloat16 runs the prediction pass under autocast (weights and training stay float32).
    inference_dtype: Literal["float32", "bfloat16"] = "float32"
    # One CUDA graph per batch bucket; auto: on when the device is CUDA (no effect on the CPU).
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    # Run every batch bucket once at start-up; auto: on CUDA (where it also captures the graphs),
    # not on the CPU, where it costs start-up time and memory for shapes that may never come.
    warmup_buckets: Literal["auto", "on", "off"] = "auto"
    # After a device failure that does not go away (a sticky CUDA error), stop the server so
    # that its orchestrator restarts it (`lenet serve` then exits with status 3).
    exit_on_device_failure: bool = True

    # Threads torch may use for one operation; unset, torch's default (one per core). On a host
    # busy with other work, fewer can pay off: idle OpenMP workers spin on the event loop's core.
    torch_threads: Annotated[int | None, Field(ge=1)] = None
    access_log: bool = False
    # Move everything alive after start-up out of the garbage collector's sight (gc.freeze):
    # a full collection then scans only what requests create, instead of pausing every request
    # for the ~330,000 objects of torch, FastAPI and the model (see the README's benchmark).
    gc_freeze: bool = True

    # Versions you can name: how many stay in memory (weights only, 241 KiB each), and how long
    # a `min_version` request may wait for the current version to reach it.
    keep_versions: Annotated[int, Field(ge=1, le=4096)] = 16
    min_version_wait_ms: Annotated[float, Field(ge=0, le=60_000)] = 2000.0

    # More than one machine: the role, the version store both roles share (file:///path), how
    # often a trainer publishes while it changes and how often a predictor looks for a newer one.
    role: Role = "all"
    store_url: str | None = None
    publish_interval_ms: Annotated[float, Field(ge=0, le=60_000)] = 100.0
    poll_interval_ms: Annotated[float, Field(gt=0, le=60_000)] = 100.0

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

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _empty_grpc_port_is_off(cls, value: Any) -> Any:
        # compose passes LENET_GRPC_PORT through as an empty string when the shell has none.
        return None if isinstance(value, str) and value.strip() == "" else value

    @field_validator("api_token")
    @classmethod
    def _token_is_usable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None  # an empty LENET_API_TOKEN means "no token", not "the empty token"
        if len(value.get_secret_value()) < 8:
            raise ValueError("api_token must be at least 8 characters")
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        value = _comma_separated(value)
        return None if value == () else value  # an empty value means the default

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None or value == ("*",):
            return value
        if "*" in value:
            raise ValueError("allowed_hosts: '*' (any host) goes alone, not beside names")
        return tuple(normalize_host_name(name) for name in value)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        return _comma_separated(value)

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin.strip().lower() in ("*", "null"):
                # "*" would let every site train the model, "null" every sandboxed page or file.
                raise ValueError(f"cors_origins: {origin!r} is not allowed; name each origin")
        return tuple(normalize_origin(origin) for origin in value)

    @model_validator(mode="after")
    def _lr_within_max_lr(self) -> Self:
        # The optimizer's starting lr obeys the bound every per-step and PUT /optimizer lr does.
        if self.lr > self.max_lr:
            raise ValueError(f"LENET_LR ({self.lr}) must be at most LENET_MAX_LR ({self.max_lr})")
        return self

    @field_validator("store_url")
    @classmethod
    def _store_is_a_folder(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        parts = urlsplit(value.strip())
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(
                f"store_url {value!r} is not supported: use file:///absolute/path (a folder, "
                "on a shared volume for more than one machine)"
            )
        return value.strip()

    @model_validator(mode="after")
    def _roles_have_a_store(self) -> "Settings":
        if self.role != "all" and self.store_url is None:
            raise ValueError(
                f"role {self.role!r} needs store_url (file:///path), shared by both roles"
            )
        return self

    @property
    def store_path(self) -> Path | None:
        """The version store's folder (from `store_url`), or None without a store."""
        if self.store_url is None:
            return None
        return Path(unquote(urlsplit(self.store_url).path))

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
