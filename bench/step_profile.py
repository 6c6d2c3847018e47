"""Where a training step's time goes, kernel by kernel (what a fused kernel could save).

    python bench/step_profile.py [--config seed-baseline] [--batch 16] [--seq 64]
                                 [--backend cpp] [--threads 2] [--steps 20] [--cpu]

Times sllm.bench.train_step twice: plain, then with every kernel of the backend wrapped
by a timer (the wrapper's own cost shows as the difference of the two step times). Prints,
per kernel, the time per step, the calls per step, the time per call and the share of the
plain step, then what is left outside the kernels (Python between the calls: zeroing the
gradients, the clip's scaling, the model's bookkeeping). The load average is printed with
it: on the shared 2-core machines a profile taken under load shows the load too. With
--cpu (one kernel thread) every time is the calling thread's CPU time instead of the wall
clock's: what another process takes from this one does not count, so a profile taken under
load reads like a quiet machine's.
"""
from __future__ import annotations

import argparse
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

import sllm
from sllm.backends.base import KERNELS, OPTIONAL_KERNELS
from sllm.bench import train_step
from sllm.optim import AdamW

ROOT = Path(__file__).resolve().parent.parent


def time_steps(model: Any, opt: Any, x: np.ndarray, y: np.ndarray, steps: int,
               clock: Any = time.perf_counter) -> float:
    """Seconds per train_step by `clock`, the mean of `steps` after one warm-up step."""
    train_step(model, opt, x, y)
    t0 = clock()
    for _ in range(steps):
        train_step(model, opt, x, y)
    return (clock() - t0) / steps


def instrument(backend: Any, spent: defaultdict[str, float], calls: Counter[str],
               clock: Any = time.perf_counter) -> None:
    """Wrap every kernel of this backend instance with a timer adding into spent/calls."""
    for kernel in KERNELS + OPTIONAL_KERNELS:
        inner = getattr(backend, kernel)

        def timed(*args: Any, _inner: Any = inner, _name: str = kernel, **kw: Any) -> Any:
            t0 = clock()
            try:
                return _inner(*args, **kw)
            finally:
                spent[_name] += clock() - t0
                calls[_name] += 1
        setattr(backend, kernel, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="seed-baseline")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cpu", action="store_true",
                    help="time by this thread's CPU time (needs --threads 1): robust to load")
    args = ap.parse_args()
    if args.cpu and args.threads != 1:
        ap.error("--cpu counts the calling thread only: give --threads 1 with it")
    clock = time.thread_time if args.cpu else time.perf_counter
    cfg = sllm.ModelConfig.from_json(ROOT / "configs" / f"{args.config}.json")
    backend = sllm.backends.get(args.backend)
    backend.set_num_threads(args.threads)
    model = sllm.SLLM(cfg, backend=backend)
    opt = AdamW(model)
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, cfg.vocab_size, (args.batch, args.seq)) for _ in range(2))
    load = os.getloadavg()[0]
    plain = time_steps(model, opt, x, y, args.steps, clock)
    spent: defaultdict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    instrument(backend, spent, calls, clock)
    timed = time_steps(model, opt, x, y, args.steps, clock)
    n = args.steps + 1  # the warm-up step is counted too
    print(f"{args.config} B{args.batch} T{args.seq} on {args.backend}, {args.threads} threads, "
          f"load average {load:.1f}: {plain * 1e3:.2f} ms a step ({timed * 1e3:.2f} ms timed "
          f"per kernel), {model.flat_params.size:,} parameters\n")
    print("| kernel | ms a step | calls a step | us a call | share of the step |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kernel, secs in sorted(spent.items(), key=lambda kv: -kv[1]):
        c = calls[kernel] // n
        print(f"| {kernel} | {secs / n * 1e3:.3f} | {c} | {secs / calls[kernel] * 1e6:.1f} | "
              f"{secs / n / plain:.1%} |")
    outside = timed - sum(spent.values()) / n
    print(f"| outside the kernels | {outside * 1e3:.3f} | | | {outside / plain:.1%} |")


if __name__ == "__main__":
    main()
