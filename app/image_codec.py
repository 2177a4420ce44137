"""Uploaded PNG or JPEG files -> validated image tensors, with the limits.

Each file becomes one 32x32 image as the contract fixes it: Pillow's `convert("L")`, scaled to
[0, 1], then resized bilinearly as `F.interpolate(align_corners=False, antialias=False)` does;
`invert=true` then takes 1 - x, for dark digits on a light page. An image's size is read from its
header and checked against LENET_MAX_IMAGE_SIDE before any pixel is decoded, so a small file that
claims a huge image (a decompression bomb) costs nothing.
"""

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from app.errors import InvalidInput
from app.tensors import needs_resize, resize_images

# The multipart field that carries the files, and the only decoders that see uploaded bytes.
FIELD = "files"
FORMATS = ("PNG", "JPEG")


def _label(index: int, filename: str | None) -> str:
    name = (filename or "")[:100]
    return f"{FIELD}[{index}] ({name!r})" if name else f"{FIELD}[{index}]"


def decode_image(data: bytes, label: str, max_side: int) -> np.ndarray:
    """One PNG or JPEG file -> (H, W) float32 grayscale in [0, 1], refusing oversized images."""
    too_large = f"{label}: image is over the side limit of {max_side} (LENET_MAX_IMAGE_SIDE)"
    try:
        # Only the PNG and JPEG decoders: no other of Pillow's parsers sees uploaded bytes.
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as error:
        raise InvalidInput(f"{label}: not a PNG or JPEG image") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own guard fires inside open() for headers far past any sane side limit
        # (the warning too, where warnings are errors).
        raise InvalidInput(too_large) from error
    except Exception as error:
        # Pillow's parsers raise many types on hostile files; each is the client's bad file.
        raise InvalidInput(f"{label}: the image cannot be read: {error}") from error
    with image:
        width, height = image.size  # from the header; no pixel is decoded yet
        if max(width, height) > max_side:
            raise InvalidInput(
                f"{label}: image of {height}x{width} is over the side limit of {max_side} "
                "(LENET_MAX_IMAGE_SIDE)"
            )
        if min(width, height) < 1:
            raise InvalidInput(f"{label}: the image is empty ({height}x{width})")
        try:
            gray = image.convert("L")
        except Exception as error:  # as above: any decoder failure is a bad file
            raise InvalidInput(
                f"{label}: the image data is corrupt or truncated: {error}"
            ) from error
    return np.asarray(gray, dtype=np.float32) / np.float32(255)


def images_from_files(
    files: list[tuple[str | None, bytes]], max_side: int, invert: bool
) -> torch.Tensor:
    """Decoded files -> (N, 1, 32, 32) float32, each resized on its own (sizes may differ)."""
    images = []
    for index, (filename, data) in enumerate(files):
        pixels = torch.from_numpy(decode_image(data, _label(index, filename), max_side))
        image = pixels[None, None]  # (1, 1, H, W)
        if needs_resize(image):
            # A pure function of its input: no engine state, so it need not wait for the
            # engine's torch thread.
            image = resize_images(image)
        images.append(image)
    batch = torch.cat(images)  # (N, 1, 32, 32)
    return 1 - batch if invert else batch
