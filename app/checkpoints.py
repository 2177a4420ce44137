"""Crash-safe checkpoints on disk.

A checkpoint is a folder holding `model.safetensors` (the weights), `optimizer.pt` (our own
optimizer state, read back only with `torch.load(weights_only=True)`) and `meta.json` (version,
step, optimizer config, time, and a SHA-256 of each file). It is written whole into a hidden
temporary folder beside the others, every file and the folder fsynced, then renamed into place
and the parent fsynced: a crash at any moment leaves either no checkpoint or a complete one, and
listing never sees a half-written one. A checkpoint whose files do not match their checksums is
skipped with a warning.
"""

import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

logger = logging.getLogger("lenet.checkpoints")

WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
META_FILE = "meta.json"
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint on disk is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What `GET /checkpoints` lists about one checkpoint."""

    id: str
    version: int
    step: int
    created: str
    optimizer: dict[str, Any]

    def public(self) -> dict[str, Any]:
        """The JSON object the API shows for this checkpoint."""
        return {"id": self.id, "version": self.version, "step": self.step, "created": self.created}


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read back and verified, ready for the engine to adopt."""

    info: CheckpointInfo
    weights: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CheckpointStore:
    """The checkpoint folder: save, list, load and prune, each step crash-safe."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep

    def _ensure_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def save(
        self,
        weights: dict[str, torch.Tensor],
        optimizer_state: dict[str, Any],
        version: int,
        step: int,
        optimizer_config: dict[str, Any],
    ) -> CheckpointInfo:
        """Write a new checkpoint atomically, then prune the oldest beyond `keep`."""
        self._ensure_directory()
        now = datetime.now(UTC)
        # Ids sort by creation time first, so a listing is ordered without opening files.
        checkpoint_id = f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-v{version}-{uuid.uuid4().hex[:8]}"
        weights_bytes = save_safetensors(
            {name: tensor.detach().to("cpu").contiguous() for name, tensor in weights.items()},
            metadata={"version": str(version), "step": str(step)},
        )
        buffer = io.BytesIO()
        torch.save(optimizer_state, buffer)
        optimizer_bytes = buffer.getvalue()
        meta = {
            "format": FORMAT_VERSION,
            "id": checkpoint_id,
            "version": version,
            "step": step,
            "created": now.isoformat().replace("+00:00", "Z"),
            "optimizer": optimizer_config,
            "sha256": {
                WEIGHTS_FILE: _sha256(weights_bytes),
                OPTIMIZER_FILE: _sha256(optimizer_bytes),
            },
        }
        temp = self.directory / f"{_TEMP_PREFIX}{checkpoint_id}"
        temp.mkdir()
        try:
            _write_durably(temp / WEIGHTS_FILE, weights_bytes)
            _write_durably(temp / OPTIMIZER_FILE, optimizer_bytes)
            _write_durably(temp / META_FILE, json.dumps(meta, indent=2).encode())
            _fsync_path(temp)
            os.replace(temp, self.directory / checkpoint_id)
            _fsync_path(self.directory)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self.prune()
        return self._info_from_meta(meta)

    @staticmethod
    def _info_from_meta(meta: dict[str, Any]) -> CheckpointInfo:
        return CheckpointInfo(
            id=str(meta["id"]),
            version=int(meta["version"]),
            step=int(meta["step"]),
            created=str(meta["created"]),
            optimizer=dict(meta["optimizer"]),
        )

    def _candidate_ids(self) -> list[str]:
        """Names of complete checkpoint folders, newest first (temporaries never count)."""
        if not self.directory.is_dir():
            return []
        names = [
            entry.name
            for entry in self.directory.iterdir()
            if entry.is_dir() and not entry.name.startswith(".")
        ]
        return sorted(names, reverse=True)

    def _read_meta(self, checkpoint_id: str) -> dict[str, Any]:
        try:
            meta = json.loads((self.directory / checkpoint_id / META_FILE).read_bytes())
            if not isinstance(meta, dict) or meta.get("id") != checkpoint_id:
                raise CheckpointError(f"checkpoint {checkpoint_id}: meta.json does not match")
            self._info_from_meta(meta)
            return meta
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"checkpoint {checkpoint_id}: unreadable meta.json") from error

    def list(self) -> list[CheckpointInfo]:
        """Every checkpoint whose metadata reads, newest first."""
        infos = []
        for checkpoint_id in self._candidate_ids():
            try:
                infos.append(self._info_from_meta(self._read_meta(checkpoint_id)))
            except CheckpointError as error:
                logger.warning("skipping %s", error)
        return infos

    def exists(self, checkpoint_id: str) -> bool:
        """Whether `checkpoint_id` names a checkpoint folder (never a path outside the store)."""
        return checkpoint_id in self._candidate_ids()

    def load(self, checkpoint_id: str) -> LoadedCheckpoint:
        """Read and verify one checkpoint; raises CheckpointError when anything is off."""
        if not self.exists(checkpoint_id):
            raise CheckpointError(f"checkpoint {checkpoint_id} does not exist")
        meta = self._read_meta(checkpoint_id)
        folder = self.directory / checkpoint_id
        try:
            weights_bytes = (folder / WEIGHTS_FILE).read_bytes()
            optimizer_bytes = (folder / OPTIMIZER_FILE).read_bytes()
        except OSError as error:
            raise CheckpointError(f"checkpoint {checkpoint_id}: missing file") from error
        checksums = meta.get("sha256", {})
        for name, data in ((WEIGHTS_FILE, weights_bytes), (OPTIMIZER_FILE, optimizer_bytes)):
            if checksums.get(name) != _sha256(data):
                raise CheckpointError(f"checkpoint {checkpoint_id}: {name} checksum mismatch")
        try:
            weights = load_safetensors(weights_bytes)
            # Our own file, checksummed, and still never unpickled beyond plain tensors.
            optimizer_state = torch.load(
                io.BytesIO(optimizer_bytes), weights_only=True, map_location="cpu"
            )
        except Exception as error:  # noqa: BLE001 - any failure to decode means corrupt
            raise CheckpointError(f"checkpoint {checkpoint_id}: cannot decode ({error})") from error
        return LoadedCheckpoint(self._info_from_meta(meta), weights, optimizer_state)

    def prune(self) -> None:
        """Delete the oldest checkpoints beyond `keep`, and leftovers of interrupted writes."""
        for checkpoint_id in self._candidate_ids()[self.keep :]:
            self._remove(checkpoint_id)
        for entry in self.directory.iterdir():
            if entry.name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)) and entry.is_dir():
                # Only stale leftovers: our own writes run one at a time on the engine's thread.
                if time.time() - entry.stat().st_mtime > 60:
                    shutil.rmtree(entry, ignore_errors=True)

    def _remove(self, checkpoint_id: str) -> None:
        # Rename first so that a crash mid-delete never leaves a half-deleted checkpoint listed.
        trash = self.directory / f"{_TRASH_PREFIX}{checkpoint_id}"
        os.replace(self.directory / checkpoint_id, trash)
        _fsync_path(self.directory)
        shutil.rmtree(trash, ignore_errors=True)
