"""The cpp backend's decode attention alone: attention_decode_batch of 1 and 16 sequences
(the engine's step) and attention_decode of one (the 1-row decode path), at a few numbers
of cached keys, for the attention shapes of small-model (4 heads of 32) and medium-model
(8 heads of 32). Every call of a round goes to the next layer's cache (a step's calls
each read their own layer's, as decode_batch's do), so the caches are as cold as in a
step rather than left in L1/L2 by the previous call. Variants alternate round by round.

    python bench/attention_decode.py [--configs small-model,medium-model] [--nk 16,64,128,256]
                                     [--rounds 7] [--threads 2]

Prints microseconds a call (median over rounds) and the GB/s of K and V rows it reads.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import sllm
from sllm.config import resolve_config

SLOTS, CALLS = 16, 60


def _calls(config: str, nk: int) -> dict[str, tuple[Callable[[int], None], int]]:
    """variant -> (call(layer), bytes of K and V rows one call reads)."""
    cfg = resolve_config(config)
    be, rng = sllm.backends.get("cpp"), np.random.default_rng(0)
    H, C, L, maxT = cfg.num_heads, cfg.embedding_dim, cfg.num_layers, cfg.max_seq_len
    D = C // H

    def f(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)
    kc, vc = [f(SLOTS, H, maxT, D) for _ in range(L)], [f(SLOTS, H, maxT, D) for _ in range(L)]
    q, out = f(SLOTS, 1, 3 * C), np.zeros((SLOTS, 1, C), np.float32)
    kv1 = [(f(1, H, maxT, D), f(1, H, maxT, D)) for _ in range(L)]

    def batch(rows: int) -> Callable[[int], None]:
        slots = np.arange(rows, dtype=np.int32)
        positions = np.full(rows, nk - 1, np.int32)
        return lambda layer: be.attention_decode_batch(out[:rows], q[:rows], kc[layer], vc[layer],
                                                       slots, positions, H)

    def one(layer: int) -> None:
        be.attention_decode(out[:1], q[:1], kv1[layer][0], kv1[layer][1], nk - 1, H)
    row_bytes = 2 * H * nk * D * 4
    return {"decode B=1": (one, row_bytes), "decode_batch B=1": (batch(1), row_bytes),
            f"decode_batch B={SLOTS}": (batch(SLOTS), SLOTS * row_bytes)}


def measure(config: str, nk: int, rounds: int) -> dict[str, tuple[float, int]]:
    """variant -> (median seconds a call, bytes a call reads)."""
    layers = resolve_config(config).num_layers
    calls = _calls(config, nk)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds + 1):  # round 0 warms the caches' pages and the pool
        for name, (call, _) in calls.items():
            t0 = time.perf_counter()
            for i in range(CALLS):
                call(i % layers)
            if round_:
                times[name].append((time.perf_counter() - t0) / CALLS)
    return {name: (statistics.median(times[name]), calls[name][1]) for name in calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="small-model,medium-model")
    ap.add_argument("--nk", default="16,64,128,256", help="cached keys per sequence")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sllm.backends.get("cpp").set_num_threads(args.threads)
    print(f"threads {args.threads}, {CALLS} calls a round, median of {args.rounds} rounds")
    for config in args.configs.split(","):
        for nk in (int(n) for n in args.nk.split(",")):
            for name, (seconds, nbytes) in measure(config, nk, args.rounds).items():
                print(f"{config:13s} nk {nk:4d}  {name:18s} {seconds * 1e6:8.1f} us"
                      f"  {nbytes / seconds / 1e9:5.1f} GB/s")


if __name__ == "__main__":
    main()
