"""The training progress bar (rich): step, loss, lr, tokens/s, validation loss and ETA."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    """A context manager; update(step, record) after each step. Silent when disabled."""

    def __init__(self, enabled: bool, start: int, total: int, console: Console | None = None):
        self.enabled, self.start, self.total = enabled, start, total
        self.val = "-"
        self._progress: Progress | None = None
        self._console = console

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self._progress = Progress(
                BarColumn(bar_width=12), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
                TextColumn("lr {task.fields[lr]}"), TextColumn("{task.fields[tps]} tok/s"),
                TextColumn("eta"), TimeRemainingColumn(compact=True),
                console=self._console)
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total, completed=self.start,
                                                 loss="-", val="-", lr="-", tps="-")
        return self

    def update(self, step: int, record: dict[str, Any]) -> None:
        """Show the state after `step` completed steps."""
        if self._progress is None:
            return
        if "val_loss" in record:
            self.val = f"{record['val_loss']:.3f}"
        self._progress.update(self._task, completed=step, loss=f"{record['loss']:.3f}",
                              val=self.val, lr=f"{record['lr']:.2e}",
                              tps=f"{record['tokens_per_s']:,.0f}")

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
