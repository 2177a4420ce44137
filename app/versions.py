"""Durable, unique version numbers: a version names one set of weights, across crashes too.

A version number is answered (by a prediction, a step, `GET /model`...) only once it lies
within a block of numbers that is *reserved* in `lenet-versions.json`, a small file of ours in
the checkpoint folder, written as write-temp, fsync, rename, fsync the folder. Reserving costs
two fsyncs once per `BLOCK` versions, so a training step waits for the disk only when it crosses
into a new block. Whatever kills the process (SIGKILL, a failing shutdown save, a stop with
`LENET_AUTOSAVE_ON_SHUTDOWN=false`), every number it ever answered is at most the reserved limit
on disk, so the next process starts above it: a jump of less than a block, never a repeat.

The rules the engine follows at start-up (see `open`, `initial` and `next`):

- The *floor* F is the largest number an earlier process may have answered: the reserved limit
  on disk (never less than the highest version among our checkpoints).
- A checkpoint loaded at start-up keeps its version C (the contract says so, and it is right: C
  was answered for exactly the weights the checkpoint holds, since a checkpoint is written from
  the state that carries C). Going back to C is not a repeat; the next change is F + 1, not C + 1.
- Weights that come from no checkpoint (LENET_SEED, or random) get F + 1, reserved at once: in
  a fresh folder (no ledger, no checkpoint) that is version 0. One exception keeps a seeded
  fresh folder free of files until something changes: with LENET_SEED set and nothing ever
  reserved there, version 0 is not reserved, so a restart with nothing reserved gives version 0
  again, to the weights of the LENET_SEED then in force. Version 0 of a folder where no version
  was ever reserved thus means "the initial weights of LENET_SEED"; with a different seed they
  differ. (Telling an answered version 0 from an unanswered one would need a write per answer.)
- Every later change (a step, a reset, a restore, an import) gets `max(current + 1, F + 1)`,
  reserved before anything changes: when the folder cannot be written, that change is refused
  with 507 and the weights stay as they were, rather than answer a number a restart could reuse.
- A checkpoint is written only at a reserved version (the store reserves it first), so our
  checkpoints beside a missing ledger always mean that the ledger was lost.
- A clean shutdown *settles* the ledger: it lowers the limit to the last version answered, so a
  clean restart continues at exactly the next number, as before this ledger existed.

A missing ledger beside our checkpoints (a folder from before the ledger, or a deleted file) or a
corrupt one cannot tell how far the last process went, and starting from the highest checkpoint
would repeat every number answered after that checkpoint. So the floor becomes the highest
checkpoint version plus `UNKNOWN_GAP` (a billion: more steps than any run takes without a
checkpoint), with a warning; never 0. A ledger whose limit is below one of our checkpoints'
versions is stale (that cannot happen while it is kept) and is treated the same way.

One process owns a checkpoint folder (one trainer, as the contract has it). Two processes that
share one anyway do not collide either: a reservation re-reads the file and starts past another
process's limit, and a shutdown lowers the limit only if the file still holds its own.
"""

import json
import logging
from pathlib import Path
from typing import Any

from app.durable import replace_durably
from app.errors import InsufficientStorage

logger = logging.getLogger("lenet.versions")

LEDGER_FILE = "lenet-versions.json"
_LEDGER_TEMP = f".{LEDGER_FILE}.tmp"
LEDGER_KIND = "lenet-serve version ledger"
LEDGER_FORMAT = 1
BLOCK = 1024
UNKNOWN_GAP = 1_000_000_000


class VersionsNotDurable(InsufficientStorage):
    """The ledger cannot be written, so no new version number can be promised unique (a 507)."""


class VersionLedger:
    """Reserves blocks of version numbers durably in the checkpoint folder; see the module doc."""

    def __init__(self, directory: Path, block: int = BLOCK) -> None:
        assert block >= 1, "a block holds at least one version"
        self.directory = directory
        self.path = directory / LEDGER_FILE
        self.block = block
        self.floor = -1  # the largest number an earlier process may have answered
        self.limit = -1  # the largest number reserved for this process (or earlier ones)
        self._base = -1  # the largest number that others (earlier or beside us) may have answered
        self._fresh = True
        self._opened = False  # by a serving process, at start-up

    def open(self, highest_checkpoint: int | None) -> int:
        """Read the ledger at start-up; returns the floor (-1 when nothing was ever reserved)."""
        on_disk = self._read()
        highest = -1 if highest_checkpoint is None else highest_checkpoint
        if on_disk == "missing" and highest < 0:
            floor = -1
        elif isinstance(on_disk, int) and on_disk >= highest:
            floor = on_disk
        else:
            floor = max(highest, 0) + UNKNOWN_GAP
            problem = {
                "missing": "is missing",
                "corrupt": "is unreadable",
            }.get(str(on_disk), f"holds {on_disk}, below checkpoint version {highest}")
            logger.warning(
                "the version ledger %s %s; new versions start above %d so that none repeats",
                self.path,
                problem,
                floor,
            )
        self.floor = self.limit = self._base = floor
        self._fresh = on_disk == "missing" and floor < 0
        self._opened = True
        return floor

    def initial(self, seeded: bool) -> int:
        """The version of start-up weights that come from no checkpoint: F + 1, reserved when it
        can be (a folder that cannot be written still serves; its changes are refused)."""
        version = self.floor + 1
        if seeded and self._fresh:
            return version  # the module doc's one exception: version 0 of LENET_SEED's weights
        try:
            version = self._reserve(version)
        except VersionsNotDurable as error:
            logger.warning("%s; serving version %d, changes will be refused", error, version)
        return version

    def next(self, current: int) -> int:
        """The number for the next new weights after `current`, durably reserved first.

        Raises VersionsNotDurable (507) when it is not reserved and cannot be."""
        version = max(current + 1, self.floor + 1)
        if version > self.limit:
            version = self._reserve(version)
        return version

    def cover(self, version: int) -> None:
        """Make sure `version` is reserved (a checkpoint is written only at a reserved version, so
        that a checkpoint beside a missing ledger always means a lost ledger). A ledger nobody
        opened (a store used offline, by a tool or a test) serves no answers: nothing to cover."""
        if self._opened and version > self.limit:
            self._reserve(version)

    def settle(self, final: int) -> None:
        """At a clean shutdown: lower the limit on disk to `final`, the last version answered."""
        settled = max(final, self._base)
        if self.limit <= self.floor or settled >= self.limit:
            return  # nothing reserved by this process, or nothing to give back
        if self._read() != self.limit:
            return  # another process reserved past us: its numbers are not ours to give back
        try:
            self._write(settled)
        except OSError:
            logger.warning("could not settle the version ledger %s", self.path, exc_info=True)
            return
        self.limit = settled

    def _reserve(self, version: int) -> int:
        on_disk = self._read()
        if isinstance(on_disk, int) and on_disk > self.limit:
            version = max(version, on_disk + 1)  # another process shares the folder
            self._base = max(self._base, on_disk)
        limit = version + self.block - 1
        try:
            self._write(limit)
        except OSError as error:
            raise VersionsNotDurable(
                f"cannot reserve version numbers in {self.directory}: "
                f"{error.strerror or error}; nothing was changed"
            ) from error
        self.limit = limit
        self._fresh = False
        return version

    def _read(self) -> int | str:
        """The reserved limit on disk, or "missing", or "corrupt"."""
        try:
            data = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return "missing"  # no file there (or no folder: then saves and changes are 507)
        except OSError:
            return "corrupt"  # a folder of that name, unreadable permissions...
        try:
            body: Any = json.loads(data)
        except ValueError:
            return "corrupt"
        reserved = body.get("reserved") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or body.get("kind") != LEDGER_KIND
            or body.get("format") != LEDGER_FORMAT
            or not isinstance(reserved, int)
            or isinstance(reserved, bool)
            or reserved < -1
        ):
            return "corrupt"
        return reserved

    def _write(self, reserved: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        body = {"kind": LEDGER_KIND, "format": LEDGER_FORMAT, "reserved": reserved}
        replace_durably(self.path, json.dumps(body).encode() + b"\n", self.directory / _LEDGER_TEMP)
