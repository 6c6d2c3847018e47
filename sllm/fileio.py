"""Atomic file writes: a crash or kill mid-write never leaves a partial file at the
destination and never damages the file already there."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .outputs import OutputError, regular_or_absent

TMP_MARK = ".tmp-"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a binary file that appears at `path` only once fully written and fsynced.

    The data goes to a hidden temp file beside the destination (".NAME.tmp-PID"), which
    is renamed over `path` at the end and removed on any error. An existing `path` that
    is not a regular file (a device, socket, pipe or directory) is refused. A process killed outright
    cannot clean up after itself, so each write first removes the temp files that dead
    processes left for the same destination.
    """
    dest = Path(path)
    regular_or_absent(dest)  # never rename a file over a device node, socket or directory
    _remove_stale_temps(dest)
    tmp = dest.parent / f".{dest.name}{TMP_MARK}{os.getpid()}"
    try:
        handle = open(tmp, "wb")
    except OSError as e:  # e.g. /proc/self/mem: a "regular" file in a directory of none
        raise OutputError(f"{dest}: cannot write there: sllm writes a new file beside it and "
                          f"renames it over, and {dest.parent} refuses new files "
                          f"({e.strerror})") from None
    try:
        with handle as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, as atomic_write."""
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def _remove_stale_temps(dest: Path) -> None:
    prefix = f".{dest.name}{TMP_MARK}"
    with contextlib.suppress(OSError):
        for entry in os.scandir(dest.parent if str(dest.parent) else "."):
            pid = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
