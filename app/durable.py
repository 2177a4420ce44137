"""Writes that survive a crash: what the checkpoints, the version ledger and the version store
share. A file is written whole and fsynced; a replacement goes through a temporary name beside
it, then a rename and an fsync of the folder, so a reader (or a restart after a crash) sees the
old file or the new one, never a part of either."""

import contextlib
import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write `path` whole and fsync it."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def replace_durably(path: Path, data: bytes, temp: Path) -> None:
    """Replace `path` by `data` through `temp` (a name beside it), then rename and fsync the
    folder; `temp` is removed if anything fails."""
    try:
        write_durably(temp, data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
