"""Learning curves from a run's metrics.jsonl (matplotlib, an optional extra: sllm[plot])."""
from __future__ import annotations

import json
import os
from typing import Any

from .errors import SLLMError


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of run_dir/metrics.jsonl (or of a metrics file given directly)."""
    path = os.fspath(run_dir)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        raise SLLMError(f"{path}: no metrics file (is this a run directory?)") from None
    except json.JSONDecodeError as e:
        raise SLLMError(f"{path}: corrupt metrics line ({e})") from None
    if not records:
        raise SLLMError(f"{path}: no metrics logged yet")
    return records


def _pyplot() -> Any:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SLLMError("plotting needs matplotlib: pip install 'sllm[plot]'") from None
    return plt


def plot_runs(runs: dict[str, str | os.PathLike[str]], output: str | os.PathLike[str],
              title: str = "") -> None:
    """One figure: train (thin) and validation (markers) loss per run, and the lr."""
    plt = _pyplot()
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    for label, run_dir in runs.items():
        recs = read_metrics(run_dir)
        line, = ax_loss.plot([r["step"] for r in recs], [r["loss"] for r in recs],
                             lw=1, alpha=0.7, label=f"{label} train")
        val = [r for r in recs if "val_loss" in r]
        if val:
            ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-",
                         color=line.get_color(), label=f"{label} val")
        ax_lr.plot([r["step"] for r in recs], [r["lr"] for r in recs], color=line.get_color())
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    if title:
        ax_loss.set_title(title)
    fig.tight_layout()
    fig.savefig(os.fspath(output), dpi=100)
    plt.close(fig)


def plot_run(run_dir: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
    """Train/val loss and lr of one run."""
    plot_runs({os.path.basename(os.path.normpath(os.fspath(run_dir))) or "run": run_dir},
              output, title=os.fspath(run_dir))
