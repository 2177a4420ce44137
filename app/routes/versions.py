"""GET /versions: the versions held in memory, which requests can name (`version`)."""

from fastapi import APIRouter

from app.http import EngineDep, FastJSONResponse, error_responses
from app.schemas import VersionsResponse

router = APIRouter(tags=["versions"])


@router.get(
    "/versions",
    response_class=FastJSONResponse,
    responses={
        200: {"model": VersionsResponse},
        **error_responses({503: "not serving yet (a predictor that holds no version)"}),
    },
)
async def list_versions(engine: EngineDep) -> FastJSONResponse:
    """The current version and every resident version, newest first."""
    return FastJSONResponse(engine.versions_public())
