"""Crash-safe checkpoints on disk.

A checkpoint is a folder holding `model.safetensors` (the weights), `optimizer.pt` (our own
optimizer state, read back only with `torch.load(weights_only=True)`) and `meta.json` (version,
step, optimizer config, time, and a SHA-256 of each file). It is written whole into a hidden
temporary folder beside the others, every file and the folder fsynced, then renamed into place
and the parent fsynced: a crash at any moment leaves either no checkpoint or a complete one, and
listing never sees a half-written one. A checkpoint whose files do not match their checksums is
skipped with a warning.

The folder is shared with others (a user's notes, `lost+found`, backups, the version ledger of
`app.versions`), so only what we wrote and can recognise is ours: a folder whose name has our id
pattern *and* whose `meta.json` is ours (our format, the same id, well-typed fields). Only those
are listed, loaded, counted by `keep` and pruned; leftovers of interrupted writes are ours only
as `.tmp-<id>` or `.trash-<id>` with the same pattern. Anything else is never touched. A save that
cannot write raises `CheckpointWriteError` (a 507) after removing its own temporary folder, so
the existing checkpoints stay as they were.
"""

import hashlib
import io
import json
import logging
import os
import re
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

from app.durable import fsync_path, write_durably
from app.errors import InsufficientStorage
from app.versions import VersionLedger, VersionsNotDurable

logger = logging.getLogger("lenet.checkpoints")

WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
META_FILE = "meta.json"
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
FORMAT_VERSION = 1
# What `save` names a checkpoint: creation time (UTC, microseconds), version, 8 random hex digits.
ID_PATTERN = re.compile(r"\d{8}T\d{12}Z-v\d+-[0-9a-f]{8}")
# Leftovers of interrupted writes are deleted only this long after they were last touched.
_STALE_S = 60


class CheckpointError(Exception):
    """A checkpoint on disk is missing, incomplete or corrupt."""


class CheckpointWriteError(InsufficientStorage, OSError):
    """A save could not write to the checkpoint folder (a 507).

    Also an OSError, so that callers that tolerate a failing disk (the autosave after a training
    step, which must not fail the step) keep tolerating it."""


def is_checkpoint_id(name: str) -> bool:
    """Whether `name` has the shape of the ids `CheckpointStore.save` makes."""
    return ID_PATTERN.fullmatch(name) is not None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CheckpointStore:
    """The checkpoint folder: save, list, load and prune, each step crash-safe."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep
        # The folder's other file of ours: which version numbers were ever handed out.
        self.versions = VersionLedger(directory)

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
        """Write a new checkpoint atomically, then prune the oldest beyond `keep`.

        Raises CheckpointWriteError when the folder cannot be written; nothing is left behind."""
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
        try:
            self._ensure_directory()
            self.versions.cover(version)
            temp.mkdir()
        except VersionsNotDurable as error:
            raise CheckpointWriteError(error.detail) from error
        except OSError as error:
            raise self._write_error(error) from error
        try:
            write_durably(temp / WEIGHTS_FILE, weights_bytes)
            write_durably(temp / OPTIMIZER_FILE, optimizer_bytes)
            write_durably(temp / META_FILE, json.dumps(meta, indent=2).encode())
            fsync_path(temp)
            os.replace(temp, self.directory / checkpoint_id)
            fsync_path(self.directory)
        except BaseException as error:
            shutil.rmtree(temp, ignore_errors=True)
            if isinstance(error, OSError):
                raise self._write_error(error) from error
            raise
        try:
            self.prune(protect=checkpoint_id)
        except OSError:
            # The checkpoint is written and durable; failing to delete an old one is no reason
            # to answer that the save failed.
            logger.warning("could not prune old checkpoints in %s", self.directory, exc_info=True)
        return self._info_from_meta(meta)

    def _write_error(self, error: OSError) -> CheckpointWriteError:
        reason = error.strerror or str(error)
        return CheckpointWriteError(
            f"cannot write a checkpoint in {self.directory}: {reason}; nothing was saved"
        )

    @staticmethod
    def _info_from_meta(meta: dict[str, Any]) -> CheckpointInfo:
        return CheckpointInfo(
            id=str(meta["id"]),
            version=int(meta["version"]),
            step=int(meta["step"]),
            created=str(meta["created"]),
            optimizer=dict(meta["optimizer"]),
        )

    def _entries(self) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.directory) as entries:
                return list(entries)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _candidate_ids(self) -> list[str]:
        """Folders named like our ids, newest first: candidates only, until meta.json agrees."""
        names = [
            entry.name
            for entry in self._entries()
            # Never a symlink: we write real folders, and a link leads outside the store.
            if is_checkpoint_id(entry.name) and entry.is_dir(follow_symlinks=False)
        ]
        return sorted(names, reverse=True)

    def _read_meta(self, checkpoint_id: str) -> dict[str, Any]:
        try:
            meta = json.loads((self.directory / checkpoint_id / META_FILE).read_bytes())
        except (OSError, ValueError) as error:
            raise CheckpointError(f"checkpoint {checkpoint_id}: unreadable meta.json") from error
        if not self._is_our_meta(meta, checkpoint_id):
            raise CheckpointError(f"checkpoint {checkpoint_id}: meta.json is not ours")
        return dict(meta)

    @staticmethod
    def _is_our_meta(meta: Any, checkpoint_id: str) -> bool:
        """Whether `meta` is what `save` writes for `checkpoint_id`: format, id and field types."""
        if not isinstance(meta, dict):
            return False
        checksums = meta.get("sha256")
        return (
            meta.get("format") == FORMAT_VERSION
            and meta.get("id") == checkpoint_id
            and _is_int(meta.get("version"))
            and meta["version"] >= 0
            and _is_int(meta.get("step"))
            and meta["step"] >= 0
            and isinstance(meta.get("created"), str)
            and isinstance(meta.get("optimizer"), dict)
            and isinstance(checksums, dict)
            and all(isinstance(checksums.get(name), str) for name in (WEIGHTS_FILE, OPTIMIZER_FILE))
        )

    def list(self) -> list[CheckpointInfo]:
        """Every checkpoint of ours whose metadata reads, newest first; nothing else."""
        infos = []
        for checkpoint_id in self._candidate_ids():
            try:
                infos.append(self._info_from_meta(self._read_meta(checkpoint_id)))
            except CheckpointError as error:
                # Named like ours, so worth a word; foreign names are not even looked at.
                logger.warning("skipping %s", error)
        return infos

    def exists(self, checkpoint_id: str) -> bool:
        """Whether `checkpoint_id` names a checkpoint of ours (never a path outside the store)."""
        if checkpoint_id not in self._candidate_ids():
            return False
        try:
            self._read_meta(checkpoint_id)
        except CheckpointError:
            return False
        return True

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

    def prune(self, protect: str | None = None) -> None:
        """Delete our oldest checkpoints beyond `keep` (never `protect`, the one just written),
        and our stale leftovers of interrupted writes; nothing else in the folder."""
        ours = [info.id for info in self.list() if info.id != protect]
        for checkpoint_id in ours[self.keep - (protect is not None) :]:
            self._remove(checkpoint_id)
        for entry in self._entries():
            for prefix in (_TEMP_PREFIX, _TRASH_PREFIX):
                if not entry.name.startswith(prefix):
                    continue
                if not is_checkpoint_id(entry.name[len(prefix) :]):
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    continue
                # Only stale leftovers: our own writes run one at a time on the engine's thread.
                if time.time() - entry.stat(follow_symlinks=False).st_mtime > _STALE_S:
                    shutil.rmtree(entry.path, ignore_errors=True)

    def _remove(self, checkpoint_id: str) -> None:
        # Rename first so that a crash mid-delete never leaves a half-deleted checkpoint listed.
        trash = self.directory / f"{_TRASH_PREFIX}{checkpoint_id}"
        os.replace(self.directory / checkpoint_id, trash)
        fsync_path(self.directory)
        shutil.rmtree(trash, ignore_errors=True)
