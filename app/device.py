"""The torch device: which one LENET_DEVICE names, how it is set up, what it is, and how its
failures become answers (503) instead of crashes.

Two kinds of failure. An out-of-memory error is about one request: it is answered 503 and the
service carries on. A CUDA error (`torch.AcceleratorError`, or a RuntimeError saying "CUDA
error") is usually sticky: the CUDA context is corrupt and every later call fails the same way.
`is_device_error` recognises those; the engine then checks whether the device still answers
(`device_answers`) and, when it does not, marks itself failed, so that readiness turns 503 and
the server exits for its orchestrator to restart it (see `Engine.device_failed`).
"""

import functools
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch

from app.errors import DeviceUnavailable

P = ParamSpec("P")
T = TypeVar("T")

# Words of the messages torch raises for a failed kernel launch, a lost device or a library
# that gave up (cuBLAS, cuDNN), as opposed to an ordinary RuntimeError (a shape mismatch).
_DEVICE_ERROR_MARKS = ("CUDA error", "CUDA driver error", "CUBLAS_STATUS_", "CUDNN_STATUS_")


def resolve_device(name: str) -> torch.device:
    """The torch device for the LENET_DEVICE setting; an unavailable one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"LENET_DEVICE={name} but CUDA is not available{_cuda_hint()}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"LENET_DEVICE={name} but only {torch.cuda.device_count()} GPUs")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"LENET_DEVICE={name} but MPS is not available")
    return device


def _cuda_hint() -> str:
    """Why CUDA may be missing: a CPU build of torch, or a driver older than its CUDA needs."""
    if torch.version.cuda is None:
        return f" (torch {torch.__version__} is a CPU-only build; build the image for CUDA)"
    return (
        f" (torch {torch.__version__} is built for CUDA {torch.version.cuda}: check that a GPU is "
        "visible (nvidia-smi, CUDA_VISIBLE_DEVICES) and that the driver is new enough for that "
        "CUDA; an image built with TORCH_VARIANT=cu126 or cu128 runs on older drivers)"
    )


def torch_variant() -> str:
    """The build of torch installed, named as the image's TORCH_VARIANT: cpu, cu126, cu128, ..."""
    cuda = torch.version.cuda
    return "cpu" if cuda is None else "cu" + "".join(cuda.split(".")[:2])


def variant_matches(expected: str) -> bool:
    """Whether the installed torch is the build TORCH_VARIANT asked for (`cuda`, the PyPI wheel,
    is any CUDA 13 build, as is `cu130`, since PyPI moves within a major version)."""
    actual = torch_variant()
    if expected in ("cuda", "cu130"):
        return actual.startswith("cu13")
    return actual == expected


def device_name(device: torch.device) -> str:
    """What computes: the GPU's name, or the CPU's model as /proc/cpuinfo names it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"
    return device.type


def device_facts(device: torch.device) -> dict[str, Any]:
    """GET /model's and the start-up log's facts: torch's version, its CUDA (None on a CPU build)
    and the device's name."""
    return {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device_name": device_name(device),
    }


def is_device_error(error: BaseException) -> bool:
    """Whether `error` says the device itself failed (not the request: out of memory is not)."""
    if isinstance(error, torch.OutOfMemoryError):
        return False
    if isinstance(error, torch.AcceleratorError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _DEVICE_ERROR_MARKS)


def device_answers(
    model: torch.nn.Module, device: torch.device, input_shape: tuple[int, ...]
) -> bool:
    """Whether the device still computes: a forward pass on a blank image, waited for. After a
    sticky CUDA error this fails too; after a one-off failure it passes."""
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape, device=device)).sum().item()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception:  # noqa: BLE001 - any failure here means the device does not answer
        return False
    return True


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
    """Keep float32 semantics on the GPU (no TF32), so answers stay within 1e-4 of the CPU's, and
    the same answer for the same input every time (deterministic cuDNN kernels, chosen once
    rather than by timing them, which could pick another kernel after a restart)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
