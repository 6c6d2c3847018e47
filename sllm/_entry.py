"""The `sllm` command's entry point (the console script and `python -m sllm`; each MPI rank
runs `python -m sllm` too).

The command line imports numpy, typer, rich and the model before it can handle anything:
0.2 s on an idle machine, seconds on a loaded one or under mpiexec, then typer reads every
command's signature to build the click command. A Ctrl-C in that window used to print a
KeyboardInterrupt traceback from whichever import or signature it hit. So
SIGINT and SIGTERM first get a handler that prints one line and exits with the shell's
status for the signal (130, 143), and get their previous handlers back once the click
command is built: from then on the CLI and the trainer handle them (a signal that was ignored,
as for a background job, stays ignored throughout). The handlers are installed through the
C module _signal: `import signal` runs Python code (its enums) for several milliseconds, in
which a Ctrl-C still raised a KeyboardInterrupt (a CI run at load 7 caught one at 50 ms).
"""
from __future__ import annotations

import _signal
import os
import sys

TYPE_CHECKING = False  # not typing's: every import here widens the window signals hit
if TYPE_CHECKING:
    from typing import Any

EARLY = {_signal.SIGINT: "SIGINT", _signal.SIGTERM: "SIGTERM"}


def _exit_early(signum: int, frame: Any) -> None:
    os.write(2, f"sllm: stopped by {EARLY[signum]} while starting\n".encode())
    os._exit(128 + signum)  # nothing is written yet: no cleanup to run, no import to unwind


def main() -> None:
    """Run the command line, a signal while it loads ending the process without a traceback."""
    previous = {s: _signal.getsignal(s) for s in EARLY}
    for s, handler in previous.items():
        if handler != _signal.SIG_IGN:
            _signal.signal(s, _exit_early)
    if not _joins_a_job():
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, EARLY)  # a rank's launcher blocked them
    import typer

    from .cli import app
    command = typer.main.get_command(app)  # typer reads every signature: part of starting
    for s, handler in previous.items():
        _signal.signal(s, handler if handler is not None else _signal.SIG_DFL)
    command(prog_name="sllm")  # click turns a KeyboardInterrupt into "Aborted!", status 1


def _joins_a_job() -> bool:
    """True in a process of `sllm train --ranks N`'s job (the launcher set SLLM_LAUNCHER,
    see sllm.jobcontrol): there SIGINT and SIGTERM stay blocked, as the launcher started it,
    until the rank has joined the job (`jobcontrol.accept_signals`). A rank that a signal
    ended while starting left its peers waiting in MPI's init for good, holding the GIL."""
    return bool(os.environ.get("SLLM_LAUNCHER")) and sys.argv[1:2] == ["train"]
