"""The model's own side of batched serving, the engine left out: SLLM.decode of one
sequence against SLLM.decode_batch of 16 (the engine's step), alternating round by round
in this process, per config and weight type. Prints microseconds a step, tokens/s and the
16-vs-1 ratio; with --ab also the 16-row step without one of its optimizations, alternating
with it: `--ab fused` (or plain --ab) turns the fused decode_block_batch off (the kernels one
by one, as a backend without it runs them), `--ab packed` the packed weights
(Backend.pack_weight: every GEMM packs its weight per call, as before them).

    python bench/batch_decode.py [--configs small-model,medium-model] [--types f32,q8_0,q4_0]
                                 [--rounds 5] [--ab [fused|packed]]

bench/engine_overhead.py measures the engine's work around these steps.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

import sllm
from sllm.config import resolve_config

ROWS, PROMPT, STEPS = 16, 16, 48  # as bench/targets.py's engine rows: 16-token prompts


def _steps(model: Any, cache: Any) -> float:
    """Seconds per decode step of the cache's sequences (1, or ROWS at mixed lengths
    PROMPT + 0..4). The caches live as long as the model, as the engine's do: a fresh
    one would fault its pages in during the timed steps."""
    cfg, rng, rows = model.config, np.random.default_rng(0), len(cache.k[0])
    if rows == 1:
        cache.pos = 0
        model.decode(rng.integers(0, cfg.vocab_size, (1, PROMPT)), cache)
        t0 = time.perf_counter()
        for _ in range(STEPS):
            model.decode(rng.integers(0, cfg.vocab_size, (1, 1)), cache)
    else:
        slots, lengths = np.arange(rows), PROMPT + np.arange(rows) % 5
        t0 = time.perf_counter()
        for s in range(STEPS):
            model.decode_batch(rng.integers(0, cfg.vocab_size, rows), cache, slots, lengths + s)
    return (time.perf_counter() - t0) / STEPS


def measure(config: str, qtype: str, rounds: int, ab: str | None) -> dict[str, float]:
    """Median seconds a step: 'one', 'many' and, with ab, 'many without' (fused or packed)."""
    model = sllm.SLLM(resolve_config(config), backend="cpp", seed=0).eval()
    if qtype != "f32":
        model.quantize(qtype)
    fused, caches = model._fused_batch, {1: model.new_cache(1), ROWS: model.new_cache(ROWS)}
    runs: dict[str, list[float]] = {"one": [], "many": [], **({"many without": []} if ab else {})}
    try:
        for round_ in range(rounds + 1):  # round 0 warms caches, activations, the thread pool
            for name, times in runs.items():
                without = name == "many without"
                model._fused_batch = fused and not (without and ab == "fused")
                model.pack_weights = not (without and ab == "packed")
                seconds = _steps(model, caches[1 if name == "one" else ROWS])
                if round_:
                    times.append(seconds)
    finally:
        model._fused_batch = fused
        model.pack_weights = True
        for cache in caches.values():
            cache.release()
    return {name: float(np.median(times)) for name, times in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="small-model,medium-model")
    ap.add_argument("--types", default="f32,q8_0,q4_0")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ab", nargs="?", const="fused", choices=("fused", "packed"),
                    help="also time the 16-row step with the fused blocks (fused, the "
                         "default) or the packed weights (packed) turned off")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, cpp threads "
          f"{sllm.backends.get('cpp').probe()['threads']}")
    print("| model | type | 1 sequence | 16 sequences | 16-vs-1 tokens/s |"
          + (f" 16 not {args.ab} | {args.ab}/not |" if args.ab else ""))
    print("| --- | --- | ---: | ---: | ---: |" + (" ---: | ---: |" if args.ab else ""))
    for config in args.configs.split(","):
        for qtype in args.types.split(","):
            t = measure(config, qtype, args.rounds, args.ab)
            line = (f"| {config} | {qtype} | {t['one'] * 1e6:,.0f} us ({1 / t['one']:,.0f} tok/s)"
                    f" | {t['many'] * 1e6:,.0f} us ({ROWS / t['many']:,.0f} tok/s)"
                    f" | {t['one'] * ROWS / t['many']:.2f}x |")
            if args.ab:
                line += (f" {t['many without'] * 1e6:,.0f} us |"
                         f" {t['many'] / t['many without']:.2f}x |")
            print(line, flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
