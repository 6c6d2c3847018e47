"""Where a command may write: one policy for every writer (quantize, export, export-web,
convert, import, merge, train's run directory).

A writer calls `check_output` before it reads or computes anything, so a refused output
costs nothing and destroys nothing. Refused, always: an output that is one of the inputs
(the same path after resolving links, or the same inode), an output inside a directory
given as input (a run directory: its model files are the input), a directory output that
would hold an input, `/`, and any existing path that is not a regular file (a device, a
socket, a pipe) where a file is written. Refused without `--overwrite`: an existing file,
or an existing directory that is not empty. The data itself is then written through
sllm.fileio.atomic_write, which refuses a non-regular destination again at write time.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import SLLMError

KINDS = ("file", "dir", "run")
"""file: one file written; dir: a directory of files written (must be empty unless
overwrite); run: a training run directory (train checks for a run already in it)."""


class OutputError(SLLMError, ValueError):
    """An output path would destroy an input or something that is not ours to replace."""


def check_output(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None] = (),
                 overwrite: bool = False, kind: str = "file", option: str = "-o") -> Path:
    """The output path, once it is safe to write `kind` there; OutputError says why not.

    `inputs` are the files or directories the command reads (None entries are skipped)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out = Path(output)
    target = Path(os.path.realpath(out))
    if target == Path(target.anchor):
        raise OutputError(f"{option} {out}: the root of the file system is never an output")
    for src in inputs:
        if src is not None:
            _check_not_input(out, target, Path(src), kind, option)
    try:
        info = os.stat(out)
    except FileNotFoundError:
        return out
    except OSError as e:
        raise OutputError(f"{option} {out}: cannot check the output ({e})") from None
    _check_existing(out, info, overwrite, kind, option)
    return out


def _check_not_input(out: Path, target: Path, src: Path, kind: str, option: str) -> None:
    source = Path(os.path.realpath(src))
    if target == source or _same_file(out, src):
        raise OutputError(f"{option} {out} is the input {src}; write to another path")
    if src.is_dir() and source in target.parents:
        raise OutputError(f"{option} {out} is inside the input directory {src}; write "
                          f"outside it")
    if kind != "file" and target in source.parents:
        raise OutputError(f"{option} {out} holds the input {src}; writing there could "
                          f"replace it: choose another directory")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_existing(out: Path, info: os.stat_result, overwrite: bool, kind: str,
                    option: str) -> None:
    if kind == "file":
        if stat.S_ISDIR(info.st_mode):
            raise OutputError(f"{option} {out} is a directory; name a file to write")
        if not stat.S_ISREG(info.st_mode):
            raise OutputError(f"{option} {out} exists and is not a regular file (a device, "
                              f"socket or pipe); sllm never replaces one")
        if not overwrite:
            raise OutputError(f"{option} {out} already exists; pass --overwrite to replace it")
        return
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{option} {out} exists and is not a directory")
    if kind == "dir" and not overwrite and any(os.scandir(out)):
        raise OutputError(f"{option} {out} is a directory that is not empty; pass "
                          f"--overwrite to write into it anyway")


def regular_or_absent(path: str | os.PathLike[str]) -> None:
    """Refuse a destination that exists and is not a regular file (os.replace would put a
    file in place of a device node or socket, or fail on a directory halfway through)."""
    try:
        info = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(info.st_mode):
        what = "a directory" if stat.S_ISDIR(info.st_mode) else \
            "not a regular file (a device, socket or pipe)"
        raise OutputError(f"{path} exists and is {what}; sllm never replaces it")
