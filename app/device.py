"""The torch device: which one LENET_DEVICE names, how it is set up, and how its failures
become answers (503) instead of crashes."""

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

from app.errors import DeviceUnavailable

P = ParamSpec("P")
T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """The torch device for the LENET_DEVICE setting; an unavailable one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"LENET_DEVICE={name} but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"LENET_DEVICE={name} but only {torch.cuda.device_count()} GPUs")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"LENET_DEVICE={name} but MPS is not available")
    return device


def on_device_failure(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn an out-of-memory or device failure inside torch work into a 503."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except torch.OutOfMemoryError as error:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise DeviceUnavailable("the device ran out of memory; try a smaller batch") from error
        except RuntimeError as error:
            # The CPU allocator reports exhaustion as a plain RuntimeError, not OutOfMemoryError.
            if "can't allocate memory" not in str(error):
                raise
            raise DeviceUnavailable("the host ran out of memory; try a smaller batch") from error

    return wrapper


def configure(device: torch.device) -> None:
    """Keep float32 semantics on the GPU (no TF32), so answers stay within 1e-4 of the CPU's."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
