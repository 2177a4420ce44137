"""The versions kept in memory, so that a request can name one: weights only, newest last.

The engine adds an entry on its torch thread after every change (a clone of the ten tensors,
never written to again) and reads entries there when a pinned request runs. Routes read the
list on the event loop at the same time, so the entries are one immutable tuple, replaced whole
on each change (an assignment is atomic): a reader always sees a consistent list.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

import torch

from app.errors import NotFound


@dataclass(frozen=True)
class ResidentVersion:
    """One version's weights (on the engine's device), its step and when it was made."""

    version: int
    step: int
    created: datetime
    tensors: dict[str, torch.Tensor]

    def public(self) -> dict[str, int | str]:
        """What GET /versions lists about it."""
        return {"version": self.version, "step": self.step, "created": self.created.isoformat()}


class ResidentVersions:
    """The newest `keep` versions, in the order they were made."""

    def __init__(self, keep: int) -> None:
        assert keep >= 1, "the current version is always resident"
        self.keep = keep
        self._entries: tuple[ResidentVersion, ...] = ()

    def add(self, version: int, step: int, tensors: dict[str, torch.Tensor]) -> None:
        """Keep `tensors` (cloned by the caller) as `version`; the oldest beyond `keep` go."""
        entries = self._entries
        assert not entries or version > entries[-1].version, "versions only grow"
        entry = ResidentVersion(version, step, datetime.now(UTC), tensors)
        self._entries = (*entries, entry)[-self.keep :]

    def newest(self) -> ResidentVersion | None:
        """The current version, or None before the first."""
        entries = self._entries
        return entries[-1] if entries else None

    def newest_first(self) -> list[ResidentVersion]:
        """Every resident version, newest first."""
        return list(reversed(self._entries))

    def get(self, version: int) -> ResidentVersion:
        """Version `version`'s entry; NotFound (404) naming the resident range otherwise."""
        entries = self._entries
        for entry in reversed(entries):
            if entry.version == version:
                return entry
        raise NotFound(f"version {version} is not resident; {self.describe_range(entries)}")

    def range_text(self) -> str:
        """The resident range in words, as `get`'s 404 names it."""
        return self.describe_range(self._entries)

    @staticmethod
    def describe_range(entries: tuple[ResidentVersion, ...]) -> str:
        """The resident range in words, for error messages."""
        if not entries:
            return "no version is resident yet"
        return (
            f"the resident versions are {entries[0].version} (oldest) to {entries[-1].version} "
            f"(newest), {len(entries)} in all"
        )
