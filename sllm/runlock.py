"""One writer per run directory: an exclusive lock file naming its owner.

`acquire(run_dir)` creates RUN_DIR/run.lock with O_CREAT|O_EXCL (atomic: of two processes
racing, exactly one creates it) and writes the owner's pid, host, start time and command
into it. A second writer gets RunLockedError naming that owner. A lock left by a process
that no longer runs (same host; the pid is gone or now belongs to a process started
later) is stale: it is taken over, with a warning naming the dead owner. Takeovers are
serialised by an flock on the directory, so two processes cannot both take over the same
stale lock. A lock from another host is never presumed dead: the message says how to
remove it by hand.

The API is one context manager (`run_lock`) and one function (`acquire`) returning a
`RunLock` with `release()`; a data-parallel run takes the lock on rank 0 only.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

from .checkpoint import RunError

LOCK_NAME = "run.lock"
_EMPTY_GRACE_S = 5.0  # an empty lock file younger than this is being written right now
_HELD: weakref.WeakSet[RunLock] = weakref.WeakSet()  # this process's locks, for release_all


class RunLockedError(RunError):
    """Another live process is writing this run directory."""


class RunLock:
    """A held lock on one run directory; release() (or garbage collection) frees it."""

    def __init__(self, run_dir: str, owner: dict[str, Any]):
        self.run_dir, self.path, self.owner = run_dir, os.path.join(run_dir, LOCK_NAME), owner
        self._finalizer = weakref.finalize(self, _remove_if_ours, self.path, owner["token"])
        _HELD.add(self)

    @property
    def held(self) -> bool:
        """True until release()."""
        return self._finalizer.alive

    def release(self) -> None:
        """Remove the lock file (only if it is still ours). Safe to call twice."""
        # The finalizer forgets the lock before it removes the file: a Ctrl-C or SIGTERM
        # in between (a second one, as after a graceful stop) would leave run.lock behind.
        with _signals_held():
            self._finalizer()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def acquire(run_dir: str | os.PathLike[str]) -> RunLock:
    """Lock run_dir (created if missing) for this process, or raise RunLockedError."""
    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    owner = _me()
    # The lock appears whole (os.link of a finished file): a lock created empty and then
    # written could be left empty by a signal in between, with no owner to release it.
    draft = os.path.join(run_dir, f".{LOCK_NAME}.{owner['token']}")
    # Its release exists before the lock does: a SIGTERM (KeyboardInterrupt while a run is
    # prepared) that landed as os.link returned left run.lock with no RunLock to remove it.
    lock = RunLock(run_dir, owner)
    try:
        try:
            _link_draft(run_dir, draft, owner)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(draft)
        return lock
    except BaseException:
        lock.release()  # removes run.lock only where it is ours
        raise


def _link_draft(run_dir: str, draft: str, owner: dict[str, Any]) -> None:
    """Write the owner to `draft`, then link it into place as run_dir's lock (taking over a
    stale one), or raise RunLockedError."""
    with open(draft, "w", encoding="utf-8") as f:
        json.dump(owner, f)
        f.flush()
        os.fsync(f.fileno())
    path = os.path.join(run_dir, LOCK_NAME)
    for _ in range(10):  # each pass either succeeds, refuses, or removes a stale lock
        try:
            os.link(draft, path)
            return
        except FileExistsError:
            _take_over_if_stale(run_dir, path)
    raise RunLockedError(f"{run_dir}: could not take {path} (it keeps reappearing)")


def release_all() -> None:
    """Release every lock this process holds (before an exit that skips finalizers, as
    sllm.jobcontrol's watchdog makes when the launcher of a job is gone)."""
    for lock in list(_HELD):
        lock.release()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[RunLock]:
    """`with run_lock(dir):` hold the run directory's lock for the block."""
    lock = acquire(run_dir)
    try:
        yield lock
    finally:
        lock.release()


def read_owner(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The lock file's owner record, or None when the directory is not locked."""
    try:
        with open(os.path.join(os.fspath(run_dir), LOCK_NAME), encoding="utf-8") as f:
            data = json.loads(f.read() or "null")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_owner(owner: dict[str, Any]) -> str:
    """'pid 123 on host h, started 2026-01-01T10:00:00Z (sllm train ...)'."""
    if not owner:
        return "an unknown process (the lock file is empty or unreadable)"
    cmd = f" ({owner['command']})" if owner.get("command") else ""
    return (f"pid {owner.get('pid')} on host {owner.get('host')}, started "
            f"{owner.get('started')}{cmd}")


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, where they are delivered as they would
    have been. In the main thread, where Python runs signal handlers, the handlers are
    swapped for one that notes the signal: the kernel delivers a process's signal to any
    thread not blocking it (the kernel pool's, a test runner's), and Python then runs the
    handler in the main thread all the same, so a mask on this thread alone did not hold
    it (a CI run under pytest-xdist lost run.lock that way). Another thread blocks them in
    its own mask; nothing is held where signal masks do not exist."""
    held = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        noted: list[int] = []
        previous = {s: signal.signal(s, lambda signum, frame: noted.append(signum)) for s in held}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            for signum in noted:
                signal.raise_signal(signum)
        return
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


# ---- internals -------------------------------------------------------------------------
def _me() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "proc_start": proc_start(pid), "command": " ".join(["sllm", *sys.argv[1:]])[:200],
            "token": f"{pid}-{time.time_ns()}"}


def proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first); None off Linux
    or when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(owner: dict[str, Any]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    return process_alive(pid, owner.get("proc_start"))


def process_alive(pid: int, start: int | None) -> bool:
    """True while process `pid` runs and is the process that started at `start` (None:
    unknown), so that a reused pid is not taken for its dead owner. A zombie is dead: a
    supervisor that SIGKILLs `sllm train` and never waits for it leaves one for good."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # exited, not yet reaped by its parent: it holds nothing any more
    now = proc_start(pid)
    return start is None or now is None or now == start


def _take_over_if_stale(run_dir: str, path: str) -> None:
    """Remove the lock at `path` if its owner is dead, else raise RunLockedError."""
    dir_fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)  # one takeover at a time; released on close
        owner = read_owner(run_dir)
        if owner is None:
            return  # released meanwhile: try again
        if not owner and _age(path) < _EMPTY_GRACE_S:
            time.sleep(0.05)  # its creator is writing it
            return
        if owner and owner.get("host") != socket.gethostname():
            raise RunLockedError(
                f"{run_dir} is being written by {describe_owner(owner)}; another host's "
                f"process cannot be checked from here: if it is not running, remove {path}")
        if owner and _alive(owner):
            raise RunLockedError(
                f"{run_dir} is being written by {describe_owner(owner)}; wait for it to "
                f"finish or stop it, or use another --out")
        warnings.warn(f"{run_dir}: taking over the lock left by {describe_owner(owner)}, "
                      f"which is no longer running", stacklevel=4)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        os.close(dir_fd)


def _age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return 0.0


def _remove_if_ours(path: str, token: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="utf-8") as f:
            if json.load(f).get("token") != token:
                return
        os.unlink(path)
