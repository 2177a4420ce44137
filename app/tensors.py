"""Request tensors -> validated torch tensors, with the limits.

The body has been parsed (and its nested `inputs` made one array) by `app.json_body`; this
module checks shapes and limits and makes torch tensors, with no Python-level loop over numbers.
The base64 form skips number parsing altogether. Beside the codec live the other stateless
tensor checks: resizing, weight validation and byte-stable safetensors files. Every rejection
names what was wrong and, for a limit, the limit.
"""

import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import orjson
import pybase64
import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors

from app.errors import InvalidInput, UnsupportedMediaType
from app.json_body import (
    _NUMBER_TYPES,
    DeferredError,
    _describe,
    _finite_float32,
    check_batch_size,
    nested_images,
    nested_to_array,
)
from app.schemas import LossName
from app.settings import Settings
from models.lenet import INPUT_SHAPE, NUM_CLASSES, PARAMETER_SHAPES


@dataclass(frozen=True)
class Limits:
    """Size limits of one request's tensors."""

    max_batch_size: int
    max_image_side: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        """The limits that `settings` configures."""
        return cls(settings.max_batch_size, settings.max_image_side)

    def check_batch(self, count: int, field: str) -> None:
        """Refuse (422) a request of more than `max_batch_size` images, naming the limit."""
        check_batch_size(count, self.max_batch_size, field)


@dataclass(frozen=True)
class Targets:
    """Training targets: class indices (N,) int64 or target vectors (N, 10) float32."""

    values: torch.Tensor
    kind: Literal["indices", "vectors"]


def check_json_content_type(content_type: str | None) -> None:
    """Refuse (415) a body that is not declared as JSON."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            f"the body must be application/json, got {media_type or 'no content type'}"
        )


def reject_unknown_fields(body: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    """Refuse fields we do not read, so a misspelt one is not silently ignored."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field(s) in {where}: {unknown}; allowed: {sorted(allowed)}")


def images_from_array(array: np.ndarray, field: str, limits: Limits) -> torch.Tensor:
    """(H, W), (N, H, W) or (N, 1, H, W) -> (N, 1, H, W), checked against the limits."""
    if array.ndim == 2:
        array = array[None, None]
    elif array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        if array.shape[1] != 1:
            raise InvalidInput(
                f"{field}: a rank-4 batch must be [N, 1, H, W] (one channel), got shape "
                f"{list(array.shape)}"
            )
    else:
        raise InvalidInput(
            f"{field} must have rank 2 [H, W], 3 [N, H, W] or 4 [N, 1, H, W]; got rank {array.ndim}"
        )
    batch, _, height, width = array.shape
    limits.check_batch(batch, field)
    if max(height, width) > limits.max_image_side:
        raise InvalidInput(
            f"{field}: image of {height}x{width} is over the side limit of "
            f"{limits.max_image_side} (LENET_MAX_IMAGE_SIDE)"
        )
    if min(batch, height, width) < 1:
        raise InvalidInput(f"{field} is empty: shape {list(array.shape)}")
    return torch.from_numpy(np.ascontiguousarray(_finite_float32(array, field)))


def images_from_nested(value: Any, limits: Limits, field: str = "inputs") -> torch.Tensor:
    """The `inputs` form: nested arrays -> (N, 1, H, W) float32."""
    # `read_json_body` has already made the array (see app.json_body); other callers pass lists.
    if isinstance(value, DeferredError):
        raise value.error
    if not isinstance(value, np.ndarray):
        value = nested_images(value, field, limits.max_batch_size)
    return images_from_array(value, field, limits)


_TENSOR_FIELDS = frozenset({"shape", "dtype", "data"})


def images_from_base64(value: Any, limits: Limits, field: str = "tensor") -> torch.Tensor:
    """The `tensor` form: {"shape", "dtype": "float32", "data": base64} -> (N, 1, H, W)."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be an object, got {_describe(value)}")
    reject_unknown_fields(value, _TENSOR_FIELDS, field)
    shape, dtype, data = value.get("shape"), value.get("dtype", "float32"), value.get("data")
    if (
        not isinstance(shape, list)
        or not shape
        or any(type(dim) is not int or dim < 0 for dim in shape)
    ):
        raise InvalidInput(f"{field}.shape must be a non-empty array of non-negative integers")
    if dtype != "float32":
        raise InvalidInput(f'{field}.dtype must be "float32", got {dtype!r}')
    if not isinstance(data, str):
        raise InvalidInput(f"{field}.data must be a base64 string, got {_describe(data)}")
    if len(shape) not in (2, 3, 4):
        raise InvalidInput(
            f"{field}.shape must have rank 2 [H, W], 3 [N, H, W] or 4 [N, 1, H, W]; "
            f"got rank {len(shape)}"
        )
    expected = 4 * math.prod(shape)  # exact: Python integers do not overflow
    # The decoded length is known from the text's length: check it before decoding.
    if len(data) != 4 * ((expected + 2) // 3):
        raise InvalidInput(
            f"{field}.data does not match shape {shape}: expected {expected} bytes of float32 "
            "as padded base64"
        )
    try:
        # pybase64 decodes with SIMD, about 50 times faster than binascii (1 ms for a batch of
        # 64 images, a tenth of a training step), and validates the alphabet as strictly.
        # Into a bytearray: writable memory that torch can wrap, without a copy of the bytes.
        raw = pybase64.b64decode_as_bytearray(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidInput(f"{field}.data is not valid base64: {error}") from error
    if len(raw) != expected:
        raise InvalidInput(f"{field}.data holds {len(raw)} bytes; shape {shape} needs {expected}")
    array = np.frombuffer(raw, dtype="<f4").reshape(shape)
    return images_from_array(array, field, limits)


def images_from_body(body: dict[str, Any], limits: Limits) -> torch.Tensor:
    """Exactly one of `inputs` and `tensor` -> (N, 1, H, W) float32."""
    has_inputs, has_tensor = "inputs" in body, "tensor" in body
    if has_inputs == has_tensor:
        raise InvalidInput(
            "give exactly one of 'inputs' (nested arrays) and 'tensor' (base64 float32), "
            + ("not both" if has_inputs else "found neither")
        )
    if has_inputs:
        return images_from_nested(body["inputs"], limits)
    return images_from_base64(body["tensor"], limits)


def targets_from_json(value: Any, batch_size: int) -> Targets:
    """Class indices (N integers 0-9) or target vectors (N x 10 numbers; a length-10 array
    when N is 1), with no coercion: 3.0 is not a class index."""
    if value is None:
        raise InvalidInput("targets are required")
    array = nested_to_array(value, "targets", max_rank=2)
    if array.ndim == 1 and array.shape[0] == batch_size and _all_json_integers(value):
        if array.min() < 0 or array.max() >= NUM_CLASSES:
            raise InvalidInput(
                f"targets: class indices must be in 0-{NUM_CLASSES - 1}, got "
                f"{int(array.min()) if array.min() < 0 else int(array.max())}"
            )
        return Targets(torch.from_numpy(array.astype(np.int64)), "indices")
    if array.ndim == 1 and batch_size == 1 and array.shape[0] == NUM_CLASSES:
        array = array[None]
    if array.ndim == 2 and array.shape == (batch_size, NUM_CLASSES):
        return Targets(torch.from_numpy(_finite_float32(array, "targets")), "vectors")
    if array.ndim == 1 and array.shape[0] == batch_size:
        raise InvalidInput("targets: class indices must be JSON integers 0-9 (3, not 3.0)")
    raise InvalidInput(
        f"targets must be {batch_size} class indices or a [{batch_size}, {NUM_CLASSES}] array of "
        f"target vectors; got shape {list(array.shape)}"
    )


def vectors_from_json(value: Any, batch_size: int, field: str) -> torch.Tensor:
    """N x 10 numbers (a length-10 array when N is 1) -> (N, 10) float32: the tutorial's
    `out.backward(torch.randn(1, 10))` gradients."""
    if value is None:
        raise InvalidInput(f"{field} is required")
    array = nested_to_array(value, field, max_rank=2)
    if array.ndim == 1 and batch_size == 1 and array.shape[0] == NUM_CLASSES:
        array = array[None]
    if array.shape != (batch_size, NUM_CLASSES):
        raise InvalidInput(
            f"{field} must be a [{batch_size}, {NUM_CLASSES}] array (one row of {NUM_CLASSES} "
            f"per image); got shape {list(array.shape)}"
        )
    return torch.from_numpy(_finite_float32(array, field))


def single_image(images: torch.Tensor, field: str) -> torch.Tensor:
    """Refuse (422) a batch of more than one image, where the route explains one."""
    if images.shape[0] != 1:
        raise InvalidInput(f"{field}: give exactly one image, got {images.shape[0]}")
    return images


def optional_class(value: Any, field: str) -> int | None:
    """A class index 0-9 as a JSON integer, or absent."""
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < NUM_CLASSES:
        raise InvalidInput(f"{field} must be a class index, an integer 0-{NUM_CLASSES - 1}")
    return value


def optional_int(value: Any, field: str) -> int | None:
    """A JSON integer, or absent."""
    if value is None:
        return None
    if type(value) is not int:
        raise InvalidInput(f"{field} must be an integer, got {_describe(value)}")
    return value


def _all_json_integers(value: list[Any]) -> bool:
    return set(map(type, value)) == {int}


LOSS_NAMES: tuple[LossName, ...] = get_args(LossName)


def resolve_loss(name: Any, targets: Targets) -> LossName:
    """The loss to use: the one named, or cross_entropy for indices and mse for vectors."""
    if name is None:
        return "cross_entropy" if targets.kind == "indices" else "mse"
    for known in LOSS_NAMES:
        if name == known and type(name) is str:
            if known == "mse" and targets.kind == "indices":
                raise InvalidInput("the mse loss needs target vectors [N, 10], not class indices")
            return known
    raise InvalidInput(f"unknown loss {name!r}; use one of {list(LOSS_NAMES)}")


def optional_lr(value: Any) -> float | None:
    """A per-step learning rate: a JSON number, or absent."""
    if value is None:
        return None
    if type(value) not in _NUMBER_TYPES:
        raise InvalidInput(f"lr must be a number, got {_describe(value)}")
    return float(value)


def optional_flag(body: dict[str, Any], name: str, default: bool = False) -> bool:
    """A boolean field with a default; no truthy numbers or strings."""
    value = body.get(name, default)
    if type(value) is not bool:
        raise InvalidInput(f"{name} must be true or false, got {_describe(value)}")
    return value


def needs_resize(images: torch.Tensor) -> bool:
    """Whether (N, 1, H, W) images are not yet the network's 32x32."""
    return tuple(images.shape[-2:]) != INPUT_SHAPE[1:]


def resize_images(images: torch.Tensor) -> torch.Tensor:
    """Resize (N, 1, H, W) to (N, 1, 32, 32), bilinear, as the contract fixes it."""
    return F.interpolate(
        images, size=INPUT_SHAPE[1:], mode="bilinear", align_corners=False, antialias=False
    )


def save_weights(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file of `tensors`, byte-stable: the same tensors and metadata always give
    the same bytes (safetensors itself writes its metadata keys in arbitrary order)."""
    raw = save_safetensors(dict(tensors), metadata=metadata)
    header_length = int.from_bytes(raw[:8], "little")
    header = orjson.loads(raw[8 : 8 + header_length])
    # Offsets in the header count from the end of the header, so the data stays as it is.
    text = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + raw[8 + header_length :]


def validate_weights(tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse (InvalidInput) anything but LeNet's ten float32 parameters with finite values."""
    missing = sorted(set(PARAMETER_SHAPES) - set(tensors))
    extra = sorted(set(tensors) - set(PARAMETER_SHAPES))
    if missing or extra:
        raise InvalidInput(
            "weights must be exactly the ten LeNet parameters; "
            f"missing {missing}, unexpected {extra}"
        )
    for name, shape in PARAMETER_SHAPES.items():
        tensor = tensors[name]
        if tensor.dtype != torch.float32:
            raise InvalidInput(f"{name}: dtype must be float32, got {str(tensor.dtype)[6:]}")
        if tuple(tensor.shape) != shape:
            raise InvalidInput(f"{name}: shape must be {list(shape)}, got {list(tensor.shape)}")
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidInput(f"{name}: values must be finite")
