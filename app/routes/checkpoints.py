"""Checkpoints: POST /checkpoints, GET /checkpoints, POST /checkpoints/{id}/restore."""

from typing import Any

from fastapi import APIRouter

from app.http import AuthDep, EngineDep
from app.schemas import CheckpointListResponse, CheckpointResponse, VersionResponse

router = APIRouter(tags=["checkpoints"])


@router.post(
    "/checkpoints", response_model=CheckpointResponse, status_code=201, dependencies=[AuthDep]
)
async def save_checkpoint(engine: EngineDep) -> dict[str, Any]:
    """Save weights, optimizer state, version and step as a new checkpoint."""
    return (await engine.save_checkpoint()).public()


@router.get("/checkpoints", response_model=CheckpointListResponse)
async def list_checkpoints(engine: EngineDep) -> dict[str, Any]:
    """Every checkpoint, newest first."""
    return {"checkpoints": [info.public() for info in await engine.list_checkpoints()]}


@router.post(
    "/checkpoints/{checkpoint_id}/restore",
    response_model=VersionResponse,
    dependencies=[AuthDep],
)
async def restore_checkpoint(checkpoint_id: str, engine: EngineDep) -> dict[str, int]:
    """Restore a checkpoint's weights, step and optimizer state, as a new version."""
    return await engine.restore_checkpoint(checkpoint_id)
