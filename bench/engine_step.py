"""Where the serving engine's 16-row decode step goes, and what its products allow.

    python bench/engine_step.py [--config small-model] [--qtype f32] [--rows 16]
                                [--rounds 5] [--dense-cache]

The step is bench/targets.py's engine wave without the engine: `rows` prompts of 16 tokens
prefilled together, then 64 greedy `decode_batch` steps (positions 16..79), cpp backend
at one kernel thread, every time the calling thread's CPU time (what other processes take
from this one does not count: a profile under load reads close to a quiet machine's).
Prints the step as the engine runs it (fused blocks), then the same step with its blocks
unfused and every kernel call timed (products, attention over the KV cache, layernorm,
GELU, residual adds, embedding, and the Python left around them); the products' GFLOP/s
against a 512 x 1024 x 1024 product of the same weight type (the reachable peak), the
one-row step, and the ratio 16 rows could reach over one row if the products ran at that
peak and nothing else took time (the bound on the engine's "16 at once vs one" ratio).
--dense-cache alternates the step with a model whose KV cache is 96 positions long instead
of max_seq_len (same weights): the cost of the cache's (slot, head, max_seq_len, D)
layout, whose heads lie max_seq_len rows apart.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from step_profile import instrument  # a sibling script: bench/ is sys.path[0] when run

import sllm
from sllm.backends.base import KERNELS, OPTIONAL_KERNELS

ROOT = Path(__file__).resolve().parent.parent
PROMPT, STEPS = 16, 64
clock = time.thread_time


def product_flops(cfg: Any) -> int:
    """Multiply-adds x 2 of one row through every matmul of the model and the head."""
    C, F = cfg.embedding_dim, cfg.ffn_hidden_dim
    return 2 * (cfg.num_layers * (3 * C * C + C * C + 2 * C * F) + C * cfg.vocab_size)


class Step:
    """A model and its KV cache of `rows` slots, the wave's prompts, the step timer."""

    def __init__(self, cfg: Any, backend: Any, qtype: str, rows: int):
        self.model = sllm.SLLM(cfg, backend=backend, seed=0).eval()
        if qtype != "f32":
            self.model.quantize(qtype)
        self.rows, self.cache = rows, self.model.new_cache(rows)
        rng = np.random.default_rng(0)
        self.prompts = [rng.integers(0, cfg.vocab_size, PROMPT).tolist() for _ in range(rows)]

    def wave(self) -> float:
        """Prefill, then STEPS greedy steps; the CPU seconds of one step (mean)."""
        m, slots = self.model, list(range(self.rows))
        last = m.prefill_batch(self.prompts, self.cache, slots).argmax(1).tolist()
        t0 = clock()
        for s in range(STEPS):
            last = m.decode_batch(last, self.cache, slots, [PROMPT + s] * self.rows,
                                  False).argmax(1).tolist()
        return (clock() - t0) / STEPS


def timed_kernels(step: Step, backend: Any, waves: int) -> tuple[float, dict[str, float]]:
    """The step with its blocks unfused, every kernel call timed: (step s, {kernel: s})."""
    spent: defaultdict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    instrument(backend, spent, calls, clock)  # bench/step_profile.py's kernel timers
    step.wave()  # packs the weights (and sets the fused flag, cleared next)
    step.model._fused_batch = False
    total, parts = 0.0, defaultdict[str, float](float)
    try:
        for _ in range(waves):
            spent.clear()
            m, slots = step.model, list(range(step.rows))
            last = m.prefill_batch(step.prompts, step.cache, slots).argmax(1).tolist()
            spent.clear()
            t0 = clock()
            for s in range(STEPS):
                last = m.decode_batch(last, step.cache, slots, [PROMPT + s] * step.rows,
                                      False).argmax(1).tolist()
            total += clock() - t0
            for k, v in spent.items():
                parts[k] += v
    finally:
        for kernel in KERNELS + OPTIONAL_KERNELS:
            delattr(backend, kernel)
        step.model._fused_batch = True
    n = waves * STEPS
    return total / n, {k: v / n for k, v in parts.items()}


def peak(backend: Any, qtype: str) -> float:
    """GFLOP/s (thread CPU) of a 512 x 1024 x 1024 product on this weight type, as the
    model's steps multiply: packed float panels or pack_q's rows."""
    from sllm.quant import quantize
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 1024)).astype(np.float32)
    w = (rng.standard_normal((1024, 1024)) * 0.05).astype(np.float32)
    out = np.zeros((512, 1024), np.float32)
    if qtype == "f32":
        packed = backend.pack_weight(w)

        def run() -> None:
            backend.matmul_fwd(out, x, packed, None)
    else:
        rows = backend.pack_q(quantize(np.ascontiguousarray(w.T), qtype), qtype)

        def run() -> None:
            backend.matmul_q_fwd(out, x, rows, None, qtype)
    run()
    best = float("inf")
    for _ in range(5):
        t0 = clock()
        for _ in range(3):
            run()
        best = min(best, (clock() - t0) / 3)
    return 2 * 512 * 1024 * 1024 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small-model")
    ap.add_argument("--qtype", default="f32", choices=["f32", "q8_0", "q4_0", "q4_1"])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dense-cache", action="store_true",
                    help="alternate with a 96-position KV cache (same weights)")
    args = ap.parse_args()
    cfg = sllm.ModelConfig.from_json(ROOT / "configs" / f"{args.config}.json")
    backend = sllm.backends.get("cpp")
    backend.set_num_threads(1)
    many, one = Step(cfg, backend, args.qtype, args.rows), Step(cfg, backend, args.qtype, 1)
    many.wave(), one.wave()
    t_many, t_one = [], []
    for _ in range(args.rounds):
        t_many.append(many.wave())
        t_one.append(one.wave())
    tm, t1 = min(t_many), min(t_one)
    print(f"{args.config} {args.qtype}, one kernel thread, thread CPU, load "
          f"{os.getloadavg()[0]:.1f} (min of {args.rounds} waves, median in brackets)")
    print(f"  {args.rows}-row step {tm * 1e6:,.0f} us ({np.median(t_many) * 1e6:,.0f}) = "
          f"{args.rows / tm:,.0f} tok/s; one-row step {t1 * 1e6:,.0f} us "
          f"({np.median(t_one) * 1e6:,.0f}) = {1 / t1:,.0f} tok/s; ratio {args.rows * t1 / tm:.2f}x")
    step, parts = timed_kernels(many, backend, 3)
    products = sum(v for k, v in parts.items() if k.startswith("matmul"))
    print(f"  unfused, each call timed: {step * 1e6:,.0f} us a step")
    for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"    {k:24s} {v * 1e6:8.1f} us {100 * v / step:5.1f}%")
    print(f"    {'(Python around them)':24s} {(step - sum(parts.values())) * 1e6:8.1f} us "
          f"{100 * (1 - sum(parts.values()) / step):5.1f}%")
    flops = product_flops(cfg) * args.rows
    reach = peak(backend, args.qtype)
    floor = flops / reach / 1e9
    print(f"  products: {flops / 1e6:.1f} MFLOP a step in {products * 1e6:,.0f} us = "
          f"{flops / products / 1e9:.0f} GFLOP/s; a 512x1024x1024 product: {reach:.0f} GFLOP/s "
          f"({100 * flops / products / 1e9 / reach:.0f}%)")
    print(f"  at that peak the products alone take {floor * 1e6:,.0f} us: {args.rows} rows "
          f"could reach {args.rows * t1 / floor:.1f}x the one-row step (one thread)")
    if args.dense_cache:
        dense = Step(dataclasses.replace(cfg, max_seq_len=96), backend, args.qtype, args.rows)
        dense.wave()
        a, d = [], []
        for _ in range(args.rounds):
            a.append(many.wave())
            d.append(dense.wave())
        r = np.array(a) / np.array(d)
        print(f"  KV cache of {cfg.max_seq_len} positions vs 96: {min(a) * 1e6:,.0f} vs "
              f"{min(d) * 1e6:,.0f} us a step (ratio of minimums {min(a) / min(d):.2f}x, "
              f"median ratio {np.median(r):.2f}x)")


if __name__ == "__main__":
    main()
