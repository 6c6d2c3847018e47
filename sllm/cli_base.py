"""What every `sllm` command module shares: the typer app, the consoles, the error wrapper
and the output and model-path helpers. sllm/cli.py and sllm/cli_lora.py register their
commands on this app (a module of its own so that neither imports the other's commands)."""
from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from ._version import __version__
from .errors import SLLMError
from .paths import shipped_configs

app = typer.Typer(help="Train and run small GPT-style language models on CPUs.",
                  no_args_is_help=True, add_completion=False)
vocab_app = typer.Typer(help="Build and inspect vocabularies (tokenizers).", no_args_is_help=True)
app.add_typer(vocab_app, name="vocab")
term = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


# --config takes a JSON file or the name of a config shipped with sllm, from any directory.
CONFIG_HELP = f"Model config: a JSON file, or a shipped config by name ({', '.join(shipped_configs())})."
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output (never the input, "
                                                   "never a device).")


def _output(path: Any, *inputs: Any, overwrite: bool, kind: str = "file") -> None:
    """Refuse an output that would destroy an input or something not ours (sllm.outputs)."""
    from .outputs import check_output
    check_output(path, inputs, overwrite=overwrite, kind=kind)


def _print_version(value: bool) -> None:
    if value:
        term.print(f"sllm {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print sllm's version and exit.")) -> None:
    """Train and run small GPT-style language models on CPUs."""


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)


def command(fn: Callable) -> Callable:
    """Turn sllm's own errors into a one-line message and exit status 1."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except (SLLMError, ValueError, OSError) as e:
            # escape: a message is text, and rich would take 'sllm[mpi]' for a style tag
            err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(1) from None
        except MemoryError as e:  # a last resort: the memory budget refuses before this
            err.print(f"[red]error:[/] out of memory ({e or 'no detail'}); try a smaller "
                      f"model or batch, or set --max-memory", highlight=False)
            raise typer.Exit(1) from None
    return wrapper


def _resolve_model(path: str) -> str:
    """A model file, or the best file in a run directory."""
    from .paths import model_file
    return os.fspath(model_file(path))
