"""Training throughput when another process competes for the cores (issue 13's fair share).

    python bench/fair_share.py --config configs/baby-gpt.json --seconds 8 --vs torch

For each contender (sllm's cpp backend, and PyTorch with --vs torch), on all cores:
  1. alone: steps/s of its training step, with nothing else of ours running;
  2. shared: the same again while a second process trains the same model the same way
     (another `sllm` cpp training run, as when two jobs share a machine).
Two processes on the same cores each deserve half of the machine, so the fair share is
half the alone rate; `shared / (alone / 2)` >= 1 means it lost nothing to sharing, and a
pool that spins on cores it cannot have collapses far below 1. Each measurement runs in
its own process; the load average is printed, since other machines' work shows up there.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(kind: str, config: str, batch: int, seq: int, seconds: float, threads: int) -> None:
    """Train for `seconds` after two warm-up steps; print {"steps_per_s": ...}."""
    import numpy as np
    sys.path.insert(0, str(HERE.parent))
    from sllm.config import ModelConfig
    cfg = ModelConfig.from_json(config)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (batch, seq))
    y = rng.integers(0, cfg.vocab_size, (batch, seq))
    if kind == "torch":
        import torch
        sys.path.insert(0, str(HERE))
        import torch_ref
        model, opt = torch_ref.make(cfg, threads)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def step() -> None:
            torch_ref.train_step(model, opt, tx, ty)
    else:
        import sllm
        from sllm.bench import train_step
        from sllm.optim import AdamW
        from sllm.threads import blas_limited
        backend = sllm.backends.get(kind)
        backend.set_num_threads(threads)
        m = sllm.SLLM(cfg, backend=backend)
        o = AdamW(m, lr=1e-4)
        limiter = blas_limited(backend)
        limiter.__enter__()  # as `sllm train` runs: numpy's BLAS kept off the cores

        def step() -> None:
            train_step(m, o, x, y)
    for _ in range(2):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    print(json.dumps({"steps_per_s": n / (time.perf_counter() - t0)}))


def start(kind: str, a: argparse.Namespace, seconds: float) -> subprocess.Popen:
    """A worker process (its stdout is a pipe)."""
    cmd = [sys.executable, __file__, "--worker", kind, "--config", a.config, "--batch-size",
           str(a.batch_size), "--seq-len", str(a.seq_len), "--seconds", str(seconds),
           "--threads", str(a.threads)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def rate(proc: subprocess.Popen) -> float:
    """The steps/s a worker printed."""
    out, _ = proc.communicate(timeout=600)
    if proc.returncode:
        raise SystemExit(f"a worker failed (exit {proc.returncode})")
    return float(json.loads(out.strip().splitlines()[-1])["steps_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(HERE.parent / "configs" / "baby-gpt.json"))
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--vs", default="", help="'torch': measure PyTorch the same way")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.seconds <= 0 or a.threads < 1 or a.batch_size < 1 or a.seq_len < 1:
        p.error("--seconds must be > 0 and --threads, --batch-size, --seq-len >= 1")
    if a.worker:
        return worker(a.worker, a.config, a.batch_size, a.seq_len, a.seconds, a.threads)
    contenders = ["cpp"] + (["torch"] if a.vs == "torch" else [])
    print("| measured | alone steps/s | shared steps/s | shared / fair share | load before..after |")
    print("| --- | ---: | ---: | ---: | --- |")
    for kind in contenders:
        before = os.getloadavg()[0]
        alone = rate(start(kind, a, a.seconds))
        rival = start("cpp", a, a.seconds + 4)  # starts first and outlasts the measurement
        time.sleep(2.0)
        shared = rate(start(kind, a, a.seconds))
        rate(rival)
        print(f"| {kind} | {alone:.1f} | {shared:.1f} | {shared / (alone / 2):.2f}x | "
              f"{before:.1f}..{os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
