"""Triton's extensions of the v2 protocol that standard clients call: model configuration,
statistics and the repository index (tritonclient's `get_model_config`,
`get_inference_statistics`, `get_model_repository_index`).

The bodies are Triton's JSON; errors are the protocol's `{"error"}` like every /v2 route, and a
version other than the current weights' is 404 there too. The figures come from
`app.kserve.InferenceStatistics`, which the service feeds as it predicts.
"""

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app import kserve
from app.errors import BadRequest
from app.http import EngineDep, SettingsDep

router = APIRouter(prefix="/v2", tags=["v2"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": kserve.ErrorResponse, "description": "unknown model or version"},
}

MODEL = "/models/{model_name}"
VERSIONED = "/models/{model_name}/versions/{model_version}"


def get_statistics(request: Request) -> kserve.InferenceStatistics:
    """The app's inference statistics (see `app.main`)."""
    statistics: kserve.InferenceStatistics = request.app.state.inference_statistics
    return statistics


StatisticsDep = Annotated[kserve.InferenceStatistics, Depends(get_statistics)]

P = ParamSpec("P")


def counted(route: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
    """An inference route, timed into the statistics as a success or a fail (an unknown model
    or version is neither: it never reached the model). The route takes `request`."""

    @functools.wraps(route)  # FastAPI reads the route's own signature through __wrapped__
    async def counting(*args: P.args, **kwargs: P.kwargs) -> Response:
        request = kwargs["request"]
        assert isinstance(request, Request)
        with get_statistics(request).request():
            return await route(*args, **kwargs)

    return counting


def _config(
    engine: EngineDep, settings: SettingsDep, model_name: str, version: str | None
) -> dict[str, Any]:
    kserve.check_model(model_name, version, engine.resident)
    return kserve.model_config(settings.max_batch_size, settings.batch_max_wait_ms)


@router.get(MODEL + "/config", responses=_ERRORS)
async def model_config(engine: EngineDep, settings: SettingsDep, model_name: str) -> dict[str, Any]:
    """Triton's model configuration: input, output, max_batch_size, dynamic batching."""
    return _config(engine, settings, model_name, None)


@router.get(VERSIONED + "/config", responses=_ERRORS)
async def model_version_config(
    engine: EngineDep, settings: SettingsDep, model_name: str, model_version: str
) -> dict[str, Any]:
    """The model configuration, if `model_version` is the current weights' version."""
    return _config(engine, settings, model_name, model_version)


def _stats(
    engine: EngineDep, statistics: StatisticsDep, model_name: str | None, version: str | None
) -> dict[str, Any]:
    if model_name is not None:
        kserve.check_model(model_name, version, engine.resident)
    return {"model_stats": [statistics.as_json(engine.version)]}


@router.get("/models/stats", responses=_ERRORS)
async def all_statistics(engine: EngineDep, statistics: StatisticsDep) -> dict[str, Any]:
    """Triton's statistics of every model (the one, `lenet`) since start-up."""
    return _stats(engine, statistics, None, None)


@router.get(MODEL + "/stats", responses=_ERRORS)
async def model_statistics(
    engine: EngineDep, statistics: StatisticsDep, model_name: str
) -> dict[str, Any]:
    """Inference counts and cumulative durations (success, fail, queue, compute) since start-up."""
    return _stats(engine, statistics, model_name, None)


@router.get(VERSIONED + "/stats", responses=_ERRORS)
async def model_version_statistics(
    engine: EngineDep, statistics: StatisticsDep, model_name: str, model_version: str
) -> dict[str, Any]:
    """The statistics, if `model_version` is the current weights' version."""
    return _stats(engine, statistics, model_name, model_version)


@router.post(
    "/repository/index",
    responses={400: {"model": kserve.ErrorResponse, "description": "bad body"}},
)
async def repository_index(request: Request, engine: EngineDep) -> list[dict[str, str]]:
    """Triton's repository index: the one model, its version and state; an optional body
    `{"ready": true}` lists only the models that are ready."""
    body = await request.body()  # tritonclient sends none
    ready_only = False
    if body.strip():
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise BadRequest(f"the body is not valid JSON: {error}") from error
        if not isinstance(parsed, dict) or set(parsed) - {"ready"}:
            raise BadRequest('the body must be a JSON object with at most "ready"')
        ready_only = parsed.get("ready", False)
        if type(ready_only) is not bool:
            raise BadRequest('"ready" must be true or false')
    return kserve.repository_index(engine.version, engine.ready, ready_only)
