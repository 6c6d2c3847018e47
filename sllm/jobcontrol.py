"""The launcher owns its job: `sllm train --ranks N` forwards the signals it gets to the
job, and the job's processes end when the launcher is gone.

Launcher side (`run_owned`): the child (mpiexec, or the one training process for
`--ranks 1`) runs in a session of its own, so that a terminal's Ctrl-C reaches it once,
through the launcher, not twice. SIGINT and SIGTERM to the launcher are passed on to it
and every process below it, each rank included; the job starts with both blocked (mpiexec keeps them
blocked, and a rank unblocks them once it has joined the job: `accept_signals`). On Linux the child also gets
SIGTERM when the launcher dies (PR_SET_PDEATHSIG), and the launcher's pid travels in LAUNCHER_ENV. A job that
has not stopped FORWARD_GRACE_S after a forwarded signal is SIGKILLed, process group and all.

Rank side (`owned_by_launcher`): a rank's parent is mpiexec's proxy, not the launcher, so a
parent-death signal alone cannot tell that the launcher died. Each rank therefore runs a
watchdog thread that polls the launcher's pid (and its start time, against pid reuse).
When the launcher is gone it sends its own process SIGTERM, which the trainer treats like
Ctrl-C (finish the step, checkpoint, release run.lock, exit); if the process is still
alive ORPHAN_GRACE_S later (stuck in a step or a collective) it releases the run locks it
holds and exits at once. Each rank also asks for SIGTERM when its own parent dies.

The watchdog is Python, so it needs the GIL, and a rank can hold it for good: MPI_Init
(run while mpi4py is imported) waits forever, holding it, when another rank died before
the job started. So each rank also starts a reaper, a tiny shell outside the interpreter
that SIGKILLs the rank REAPER_MARGIN_S after the watchdog's own hard exit was due; it dies
with the rank (PR_SET_PDEATHSIG). A run.lock left by a killed rank names a dead owner,
which `--resume` takes over.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import runlock

LAUNCHER_ENV = "SLLM_LAUNCHER"  # "PID:START" of the launcher that owns this job
POLL_S = 0.25  # how often a rank checks that its launcher is alive
ORPHAN_GRACE_S = 10.0  # after the launcher died: time to checkpoint before a hard exit
FORWARD_GRACE_S = 60.0  # after a forwarded SIGINT/SIGTERM: time to stop before SIGKILL
REAPER_MARGIN_S = 5.0  # the reaper's SIGKILL comes this long after the watchdog's exit was due
# $1 launcher pid, $2 rank pid, $3 seconds: wait for the launcher to go (or the rank to end),
# give the rank $3 seconds, then SIGKILL it.
# It ignores INT and TERM: it is in the job's process group, which the launcher signals.
# A launcher that is a zombie (killed, not yet reaped) counts as gone: kill -0 still finds it.
REAPER_SH = ("trap '' INT TERM; "
             'gone() { kill -0 "$1" 2>/dev/null || return 0; '
             's=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*") "}; '
             'case $s in Z*|X*) return 0;; esac; return 1; }; '
             'until gone "$1"; do kill -0 "$2" 2>/dev/null || exit 0; sleep 0.5; '
             'done; sleep "$3"; kill -KILL "$2" 2>/dev/null; exit 0')
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
FORWARDED = (signal.SIGINT, signal.SIGTERM)


# ---- launcher side ---------------------------------------------------------------------------
def run_owned(cmd: Sequence[str], env: dict[str, str]) -> int:
    """Run `cmd` as this launcher's job and return its exit status: SIGINT and SIGTERM sent
    to this process are forwarded to it, and it gets SIGTERM if this process dies."""
    me = os.getpid()
    _prctl()  # found before the fork: the child must not run ldconfig between fork and exec
    env = dict(env, **{LAUNCHER_ENV: f"{me}:{runlock.proc_start(me) or 0}"})
    forwarded: list[int] = []
    signalled: set[int] = set()
    job: list[subprocess.Popen[bytes]] = []

    def pass_on() -> None:
        # Again at every poll: a rank that mpiexec starts after the signal gets it too.
        for proc in job:
            for pid in [proc.pid, *descendants(proc.pid)]:  # mpiexec keeps them blocked
                if forwarded and pid not in signalled and proc.poll() is None:
                    signalled.add(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, forwarded[0])

    def forward(signum: int, frame: Any) -> None:
        forwarded.append(signum)
        pass_on()

    # Set before the job starts: a signal while it starts must reach it, not unwind this
    # process (a SIGTERM there ended the launcher with status 130 and left the job to the
    # ranks' watchdogs).
    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        if forwarded:  # before any job: nothing to stop
            return 128 + forwarded[0]
        proc = subprocess.Popen(list(cmd), env=env, start_new_session=True,
                                preexec_fn=lambda: _start_job(me))
        job.append(proc)
        pass_on()  # a signal that came while it started
        code = _wait_or_kill(proc, forwarded, pass_on)
        if code < 0:
            return 128 - code  # killed by signal N: the shell's 128 + N
        if forwarded and code != 0:
            # The job ended on the signal it was passed, with whatever status mpiexec makes
            # of ranks stopped while they started (N, 1, 11 were seen): say so, as 128 + N.
            name = signal.Signals(forwarded[0]).name
            print(f"sllm: the job ended on {name} (status {code})", file=sys.stderr, flush=True)
            return 128 + forwarded[0]
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def descendants(root: int) -> list[int]:
    """The pids below `root` in the process tree (from /proc; none where there is none).
    mpiexec's proxies run in sessions of their own, so the job's process group does not
    hold the ranks: the tree does."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{entry.name}/stat") as f:
                        ppid = int(f.read().rpartition(")")[2].split()[1])
                    children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _wait_or_kill(proc: subprocess.Popen[bytes], forwarded: list[int],
                  pass_on: Callable[[], None] = lambda: None) -> int:
    """Wait for the job; once a signal was forwarded, give it FORWARD_GRACE_S to stop (a
    step and a checkpoint), then SIGKILL every process of it: a rank still in MPI_Init
    holds the GIL and never runs its handler, and mpiexec would wait for it forever."""
    since: float | None = None
    while True:
        try:
            return proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        pass_on()
        if forwarded and since is None:
            since = time.monotonic()
        if since is not None and time.monotonic() - since > FORWARD_GRACE_S:
            name = signal.Signals(forwarded[0]).name
            print(f"sllm: the job did not stop within {FORWARD_GRACE_S:g} s of {name}; "
                  "killing it (a later --resume starts from its last checkpoint)",
                  file=sys.stderr, flush=True)
            # The ranks are found while mpiexec still parents them (they are not in its
            # process group: its proxies run in sessions of their own), then the job's own
            # process is killed first: killed after them, it could see its ranks end and exit
            # 0 in between (a preemption between the two kills on a loaded machine did that).
            ranks = descendants(proc.pid)
            for pid in [proc.pid, *ranks]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()


def _start_job(parent: int) -> None:
    """In the job's first process, before exec: SIGINT and SIGTERM blocked, a mask that
    mpiexec and its proxies keep and every rank inherits. A rank unblocks them once it has
    joined the job (`accept_signals`, past MPI's init), so a signal in its start waits
    instead of ending one rank while its peers wait for it in MPI's init; the launcher signals
    each process of the job itself, not through mpiexec, which never sees them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    _die_with_parent(parent)


def _die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """In a child before exec: `signum` when `parent` dies (and now, if it already has)."""
    set_parent_death_signal(signum)
    if os.getppid() != parent:  # the parent died between fork and prctl
        os.kill(os.getpid(), signum)


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send `signum` to this process when its parent dies (Linux
    prctl PR_SET_PDEATHSIG); False where that is not available."""
    prctl = _prctl()
    return prctl is not None and int(prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)) == 0


@functools.cache
def _prctl() -> Any:
    """libc's prctl, or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def interrupt_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so that a run being set up (or
    the launcher before its job starts) unwinds: run.lock released, temporary files
    removed. While it trains, the trainer takes SIGTERM over (a graceful stop)."""
    if threading.current_thread() is threading.main_thread():
        _RAISED.clear()
        signal.signal(signal.SIGTERM, _raise_interrupt)


def raise_if_lost() -> None:
    """Raise again the KeyboardInterrupt of a SIGTERM (interrupt_on_sigterm) that something
    caught as an ordinary error and went on: called where a prepared run would start, so
    that it unwinds instead of training until the launcher's grace kills it, leaving
    run.lock (1 of 44 runs of test_sigterm_while_the_run_is_prepared_releases_the_lock
    under load, once the known swallower, plugins.reraise_interrupt's, was fixed)."""
    if _RAISED:
        raise KeyboardInterrupt(f"signal {signal.Signals(_RAISED[-1]).name}")


def accept_signals() -> None:
    """In a process of a launched job, once it has joined the job (under MPI: past MPI's
    init, inside `distributed.guarded`): unblock SIGINT and SIGTERM, which the launcher
    started it with blocked (sllm._entry keeps them so). A signal that came while it started
    is delivered now, and ends the job through MPI Abort instead of leaving a peer stuck."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)


@contextlib.contextmanager
def graceful_to_the_end(stop: Callable[[], None]) -> Iterator[None]:
    """Around the training of a process of a launched job: SIGINT and SIGTERM only call
    `stop` (the trainer's graceful stop) in the block, where the trainer's own handler is
    not yet or no longer set too, and are ignored once it ends, to the process's exit.

    The launcher signals each process of the job itself, one after another, and the ranks
    stop together on the first one's signal: a rank's own copy could come once its run had
    ended, where it raised KeyboardInterrupt (MPI Abort, status 1) or, after Python's
    finalization had put SIG_DFL back, killed the rank (mpiexec's status 15): the launcher
    reported 143 for a job that had stopped with its checkpoint. Elsewhere (not launched,
    or not the main thread) nothing changes."""
    if launcher_from_env() is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    for s in FORWARDED:
        signal.signal(s, lambda signum, frame: stop())
    try:
        yield
    finally:
        for s in FORWARDED:  # SIG_IGN, unlike a Python handler, outlives finalization
            signal.signal(s, signal.SIG_IGN)


_RAISED: list[int] = []  # the signals _raise_interrupt turned into KeyboardInterrupt


def _raise_interrupt(signum: int, frame: Any) -> None:
    _RAISED.append(signum)
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


# ---- rank side -----------------------------------------------------------------------------
def launcher_from_env() -> tuple[int, int | None] | None:
    """The (pid, start time) of the launcher that owns this process, from LAUNCHER_ENV;
    None when this process was not started by `sllm train --ranks`."""
    value = os.environ.get(LAUNCHER_ENV, "")
    pid, _, start = value.partition(":")
    if not pid.isdigit() or int(pid) <= 0:
        return None
    return int(pid), (int(start) if start.isdigit() and int(start) > 0 else None)


alive = runlock.process_alive  # the launcher is checked as a run lock's owner is


def owned_by_launcher(grace: float = ORPHAN_GRACE_S) -> threading.Thread | None:
    """In a process the launcher started: SIGTERM on the death of the parent, and a
    watchdog that ends this process when the launcher is gone. Returns the watchdog
    thread (None outside a launched job)."""
    launcher = launcher_from_env()
    if launcher is None:
        return None
    set_parent_death_signal(signal.SIGTERM)
    start_reaper(launcher[0], grace + REAPER_MARGIN_S)
    return watch(*launcher, grace=grace)


def start_reaper(launcher: int, after: float) -> subprocess.Popen[bytes] | None:
    """Start the shell (REAPER_SH) that SIGKILLs this process `after` seconds once process
    `launcher` is gone: the backstop for a rank whose watchdog thread cannot get the GIL.
    None where there is no POSIX shell."""
    me = os.getpid()
    _prctl()  # found before the fork, as in run_owned
    try:
        return subprocess.Popen(["/bin/sh", "-c", REAPER_SH, "sllm-reaper", str(launcher),
                                 str(me), f"{after:g}"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: _die_with_parent(me, signal.SIGKILL))
    except OSError:
        return None


def watch(pid: int, start: int | None, grace: float = ORPHAN_GRACE_S,
          on_gone: Callable[[], None] | None = None) -> threading.Thread:
    """Start a daemon thread that polls process `pid`; once it is gone, call on_gone
    (default: SIGTERM to this process, a graceful stop), then after `grace` seconds release
    this process's run locks and exit with status 128 + SIGTERM."""
    def run() -> None:
        while alive(pid, start):
            time.sleep(POLL_S)
        print(f"sllm: the launcher (pid {pid}) is gone; stopping", file=sys.stderr, flush=True)
        (on_gone or _stop_gracefully)()
        time.sleep(grace)
        print(f"sllm: still running {grace:g} s after the launcher died; exiting now",
              file=sys.stderr, flush=True)
        runlock.release_all()
        os._exit(128 + signal.SIGTERM)

    thread = threading.Thread(target=run, name="sllm-launcher-watchdog", daemon=True)
    thread.start()
    return thread


def _stop_gracefully() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
