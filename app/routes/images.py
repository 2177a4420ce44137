"""POST /predict/image: predictions for uploaded PNG or JPEG files.

Each file becomes one 32x32 image as the contract fixes it: Pillow's `convert("L")`, scaled to
[0, 1], then resized bilinearly as `F.interpolate(align_corners=False, antialias=False)` does;
`invert=true` then takes 1 - x, for dark digits on a light page. An image's size is read from its
header and checked against LENET_MAX_IMAGE_SIDE before any pixel is decoded, so a small file that
claims a huge image (a decompression bomb) costs nothing.
"""

import io
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Query, Request
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.engine import resize_images
from app.errors import BadRequest, InvalidInput, UnsupportedMediaType
from app.http import EngineDep, FastJSONResponse, LimitsDep, SettingsDep
from app.schemas import PredictResponse
from app.tensors import Limits
from models.lenet import INPUT_SHAPE

router = APIRouter(tags=["predict"])

FIELD = "files"
FORMATS = ("PNG", "JPEG")
_MULTIPART = "multipart/form-data"
_MAX_TEXT_FIELDS = 8
_UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            _MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {
                        FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                            "description": "PNG or JPEG files, one image each",
                        }
                    },
                    "required": [FIELD],
                },
                "encoding": {FIELD: {"contentType": "image/png, image/jpeg"}},
            }
        },
    }
}


class ErrorDetail(BaseModel):
    """An error in FastAPI's shape: a message, or the list of validation errors."""

    detail: str | list[dict[str, Any]]


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
        if image.shape[-2:] != INPUT_SHAPE[1:]:
            # A pure function of its input: no engine state, so it need not wait for the
            # engine's torch thread.
            image = resize_images(image)
        images.append(image)
    batch = torch.cat(images)  # (N, 1, 32, 32)
    return 1 - batch if invert else batch


async def read_uploads(request: Request, max_files: int) -> list[tuple[str | None, bytes]]:
    """The files under `files` of a multipart body, at most `max_files` of them."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != _MULTIPART:
        raise UnsupportedMediaType(
            f"the body must be {_MULTIPART} with image files under the field '{FIELD}', got "
            f"{media_type or 'no content type'}"
        )
    too_many = f"at most {max_files} files per upload (LENET_MAX_UPLOAD_FILES)"
    try:
        # Text fields are refused below; the cap only stops a flood of them being parsed.
        async with request.form(max_files=max_files, max_fields=_MAX_TEXT_FIELDS) as form:
            items = form.multi_items()
            unknown = sorted({key for key, _ in items if key != FIELD})
            if unknown:
                raise InvalidInput(
                    f"unknown field(s) {unknown}; send the images under the field '{FIELD}'"
                )
            uploads = [value for _, value in items if isinstance(value, UploadFile)]
            if len(uploads) != len(items):
                raise InvalidInput(f"'{FIELD}' must hold files, not text fields")
            if not uploads:
                raise InvalidInput(f"no image: send PNG or JPEG files under the field '{FIELD}'")
            return [(upload.filename, await upload.read()) for upload in uploads]
    except StarletteHTTPException as error:
        # Starlette reports a malformed body, or a limit it enforces while parsing, as a 400.
        detail = str(error.detail)
        if detail.startswith("Too many files"):
            raise InvalidInput(too_many) from error
        if detail.startswith("Too many fields"):
            raise InvalidInput(
                f"only image files under the field '{FIELD}' are accepted"
            ) from error
        raise BadRequest(f"malformed multipart body: {detail}") from error


@router.post(
    "/predict/image",
    responses={
        200: {"model": PredictResponse},
        400: {"model": ErrorDetail, "description": "malformed multipart body"},
        413: {"model": ErrorDetail, "description": "body over LENET_MAX_BODY_BYTES"},
        415: {"model": ErrorDetail, "description": "not multipart/form-data"},
        422: {"model": ErrorDetail, "description": "not an image, or over a limit"},
    },
    openapi_extra=_UPLOAD_DOC,
)
async def predict_image(
    request: Request,
    engine: EngineDep,
    limits: LimitsDep,
    settings: SettingsDep,
    invert: Annotated[
        bool, Query(description="take 1 - x: for dark digits on a light background")
    ] = False,
) -> FastJSONResponse:
    """Logits, argmax and softmax of uploaded PNG or JPEG images (grayscale, 32x32, [0, 1])."""
    with engine.arriving_prediction():
        files = await read_uploads(request, settings.max_upload_files)
        _check_count(len(files), limits)
        images = await run_in_threadpool(images_from_files, files, limits.max_image_side, invert)
    prediction = await engine.predict(images)
    return FastJSONResponse(prediction.as_json())


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_batch_size:
        raise InvalidInput(
            f"{count} images is over the batch limit of {limits.max_batch_size} "
            "(LENET_MAX_BATCH_SIZE)"
        )
