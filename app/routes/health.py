"""Health: GET /healthz (the process answers) and GET /readyz (the model answers)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.http import EngineDep
from app.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "not ready"}},
)
async def readyz(engine: EngineDep) -> JSONResponse:
    """The model is on its device, answers, and its weights are finite."""
    if engine.device_failed is not None:
        # The server is stopping, for its orchestrator to restart it (see Engine._guarded).
        return JSONResponse({"status": f"device failed: {engine.device_failed}"}, status_code=503)
    if not engine.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    if not engine.weights_finite:
        return JSONResponse({"status": "weights are not finite"}, status_code=503)
    return JSONResponse({"status": "ready"})
