"""Learning-rate schedules: lr_at(step) for warmup + cosine, warmup + linear, constant."""
from __future__ import annotations

import math


class Schedule:
    """Base: linear warmup to base_lr over warmup_steps, then `_decay` down to min_lr
    until total_steps, then min_lr."""

    def __init__(self, base_lr: float, warmup_steps: int = 0, total_steps: int = 1,
                 min_lr: float = 0.0):
        if warmup_steps < 0 or total_steps < 0:
            raise ValueError("warmup_steps and total_steps must be >= 0")
        self.base_lr, self.min_lr = float(base_lr), float(min_lr)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def lr_at(self, step: int) -> float:
        """The learning rate for 0-based `step`."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr
        span = self.total_steps - self.warmup_steps
        progress = (step - self.warmup_steps) / span if span > 0 else 1.0
        return self.min_lr + (self.base_lr - self.min_lr) * self._decay(progress)

    def _decay(self, progress: float) -> float:
        raise NotImplementedError("_decay")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(base_lr={self.base_lr}, warmup_steps={self.warmup_steps},"
                f" total_steps={self.total_steps}, min_lr={self.min_lr})")


class WarmupCosine(Schedule):
    """Warmup, then cosine decay from base_lr to min_lr (nanoGPT's schedule)."""

    def _decay(self, progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class LinearDecay(Schedule):
    """Warmup, then linear decay from base_lr to min_lr."""

    def _decay(self, progress: float) -> float:
        return 1.0 - progress


class Constant(Schedule):
    """The same learning rate at every step."""

    def __init__(self, base_lr: float):
        super().__init__(base_lr, 0, 0, base_lr)

    def lr_at(self, step: int) -> float:
        """Always base_lr."""
        return self.base_lr


SCHEDULES = {"cosine": WarmupCosine, "linear": LinearDecay, "constant": Constant}
