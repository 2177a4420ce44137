"""POST /predict/image: predictions for uploaded PNG or JPEG files (decoded by
`app.image_codec`)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import BadRequest, InvalidInput, UnsupportedMediaType
from app.http import EngineDep, FastJSONResponse, LimitsDep, SettingsDep, error_responses
from app.image_codec import FIELD, images_from_files
from app.schemas import EXACT_VERSION, MIN_VERSION, PredictResponse

router = APIRouter(tags=["predict"])

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
        **error_responses(
            {
                400: "malformed multipart body",
                404: "`version` is not resident",
                409: "`min_version` not reached within LENET_MIN_VERSION_WAIT_MS",
                413: "body over LENET_MAX_BODY_BYTES",
                415: "not multipart/form-data",
                422: "not an image, over a limit, or both `version` and `min_version`",
            }
        ),
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
    version: Annotated[int | None, Query(ge=0, description=EXACT_VERSION)] = None,
    min_version: Annotated[int | None, Query(ge=0, description=MIN_VERSION)] = None,
) -> FastJSONResponse:
    """Logits, argmax and softmax of uploaded PNG or JPEG images (grayscale, 32x32, [0, 1])."""
    with engine.arriving_prediction():
        files = await read_uploads(request, settings.max_upload_files)
        limits.check_batch(len(files), FIELD)
        images = await run_in_threadpool(images_from_files, files, limits.max_image_side, invert)
    prediction = await engine.predict(images, version, min_version)
    return FastJSONResponse(prediction.as_json())
