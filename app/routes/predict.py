"""POST /predict: logits, predictions and probabilities for a batch of images."""

from fastapi import APIRouter, Request

from app.http import FastJSONResponse, get_engine, get_limits, json_body_doc, read_json_body
from app.schemas import PredictRequest, PredictResponse
from app.tensors import images_from_body, reject_unknown_fields

router = APIRouter(tags=["predict"])

PREDICT_FIELDS = frozenset({"inputs", "tensor"})


@router.post(
    "/predict",
    response_class=FastJSONResponse,
    responses={200: {"model": PredictResponse}},
    openapi_extra=json_body_doc(PredictRequest),
)
async def predict(request: Request) -> FastJSONResponse:
    """Logits, argmax and softmax of each image, with the version of the weights used."""
    # The engine and limits are read here rather than through Depends: the hottest route skips
    # FastAPI's dependency solving, a measurable share of a one-image request.
    engine, limits = get_engine(request), get_limits(request)
    with engine.arriving_prediction():
        body = await read_json_body(request)
        reject_unknown_fields(body, PREDICT_FIELDS, "the body")
        images = images_from_body(body, limits)
    prediction = await engine.predict(images)
    return FastJSONResponse(prediction.as_json())
