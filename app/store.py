"""The version store that a trainer publishes to and predictors follow (`LENET_STORE_URL`).

The layout, under the store's root:

    versions/<version, 20 digits>.safetensors   the weights, as GET /params/export gives them
    versions/<version, 20 digits>.json          {"kind", "format", "version", "step",
                                                 "created", "published", "sha256", "size"}
    latest.json                                 the same record as the newest version's .json

A publication writes the weights, then their record, then `latest.json`, each one whole (a
temporary file, fsync, rename, fsync of the folder): a reader sees the old pointer or the new
one, and a pointer only ever names weights that are already complete. A reader reads
`latest.json`, then the weights it names, and checks their size and SHA-256 before anything
switches; weights that do not match are refused (`StoreCorrupt`). The zero-padded names sort
in version order, so the newest version is also the largest name under `versions/`.

The layout maps onto an object store (`s3://bucket/prefix`) without a new design: each file is
one object under the prefix; a put is atomic there, so the temporary file and the rename go
away, and the order of the three puts (weights, record, pointer) stays what makes it safe.
Only `file://` is implemented: it is what the tests can run against a real server.

Old versions are pruned after each publication (the newest `keep` stay), records first, so a
reader that finds a record always finds its weights, unless it was pruned meanwhile, which it
sees as a missing file and retries at its next poll.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.durable import replace_durably

logger = logging.getLogger("lenet.store")

STORE_KIND = "lenet-serve version"
STORE_FORMAT = 1
LATEST = "latest.json"
VERSIONS = "versions"
_DIGITS = 20
_NAME = re.compile(rf"(\d{{{_DIGITS}}})\.json")


class StoreCorrupt(Exception):
    """A record or weights in the store are unreadable or do not match their checksum."""


@dataclass(frozen=True)
class StoredVersion:
    """One published version's record."""

    version: int
    step: int
    created: str  # when the trainer made the version (ISO 8601)
    published: float  # when it was published (seconds since the epoch)
    sha256: str
    size: int

    def as_json(self) -> dict[str, Any]:
        """The record as written to the store."""
        return {
            "kind": STORE_KIND,
            "format": STORE_FORMAT,
            "version": self.version,
            "step": self.step,
            "created": self.created,
            "published": self.published,
            "sha256": self.sha256,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, data: bytes) -> "StoredVersion":
        """Parse a record; StoreCorrupt when it is not one of ours, whole and well typed."""
        try:
            body = json.loads(data)
        except ValueError as error:
            raise StoreCorrupt(f"not JSON ({error})") from error
        if not isinstance(body, dict) or body.get("kind") != STORE_KIND:
            raise StoreCorrupt("not a lenet-serve version record")
        if body.get("format") != STORE_FORMAT:
            raise StoreCorrupt(f"unknown record format {body.get('format')!r}")
        ints = ("version", "step", "size")
        if not all(isinstance(body.get(k), int) and not isinstance(body[k], bool) for k in ints):
            raise StoreCorrupt("version, step and size must be integers")
        if not isinstance(body.get("published"), int | float) or isinstance(
            body["published"], bool
        ):
            raise StoreCorrupt("published must be a number")
        sha = body.get("sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise StoreCorrupt("sha256 must be 64 hex digits")
        if not isinstance(body.get("created"), str):
            raise StoreCorrupt("created must be a string")
        return cls(
            body["version"], body["step"], body["created"], float(body["published"]), sha,
            body["size"],
        )  # fmt: skip


def _write_whole(path: Path, data: bytes) -> None:
    """Write `path` so that readers see the old file or the new one, never a part."""
    replace_durably(path, data, path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"))


class VersionStore:
    """A version store in a folder (`file:///path`); see the module docstring for the layout."""

    def __init__(self, root: Path, keep: int = 64) -> None:
        assert keep >= 1
        self.root = root
        self.keep = keep
        self.latest_path = root / LATEST
        self.versions_dir = root / VERSIONS

    def _weights_path(self, version: int) -> Path:
        return self.versions_dir / f"{version:0{_DIGITS}d}.safetensors"

    def _record_path(self, version: int) -> Path:
        return self.versions_dir / f"{version:0{_DIGITS}d}.json"

    # ----------------------------------------------------------------- the trainer's side

    def publish(self, version: int, step: int, created: str, weights: bytes, now: float) -> None:
        """Publish `weights` (a safetensors file) as `version`: weights, record, pointer."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        record = StoredVersion(
            version, step, created, now, hashlib.sha256(weights).hexdigest(), len(weights)
        )
        text = json.dumps(record.as_json(), sort_keys=True).encode() + b"\n"
        _write_whole(self._weights_path(version), weights)
        _write_whole(self._record_path(version), text)
        _write_whole(self.latest_path, text)
        self._prune()

    def _prune(self) -> None:
        stored = self.stored_versions()
        for version in stored[: -self.keep]:
            with contextlib.suppress(FileNotFoundError):
                self._record_path(version).unlink()
            with contextlib.suppress(FileNotFoundError):
                self._weights_path(version).unlink()

    def stored_versions(self) -> list[int]:
        """The versions whose record is in the store, oldest first."""
        try:
            names = os.listdir(self.versions_dir)
        except FileNotFoundError:
            return []
        found = (_NAME.fullmatch(name) for name in names)
        return sorted(int(match.group(1)) for match in found if match)

    def newest_version(self) -> int | None:
        """The largest version the store holds any trace of (pointer or record), or None."""
        stored = self.stored_versions()
        newest = stored[-1] if stored else None
        try:
            latest = self.read_latest()
        except (OSError, StoreCorrupt):
            latest = None
        if latest is not None and (newest is None or latest.version > newest):
            newest = latest.version
        return newest

    # ----------------------------------------------------------------- the predictors' side

    def read_latest(self) -> StoredVersion | None:
        """The newest published version's record, or None when nothing was published yet."""
        try:
            data = self.latest_path.read_bytes()
        except FileNotFoundError:
            return None
        return StoredVersion.from_json(data)

    def read_weights(self, record: StoredVersion) -> bytes:
        """The weights `record` names, after checking their size and SHA-256 (StoreCorrupt)."""
        data = self._weights_path(record.version).read_bytes()
        if len(data) != record.size:
            raise StoreCorrupt(
                f"version {record.version}: {len(data)} bytes, the record says {record.size}"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != record.sha256:
            raise StoreCorrupt(
                f"version {record.version}: SHA-256 {digest} does not match the record's "
                f"{record.sha256}"
            )
        return data
