"""How the quantized matmul's time grows with its input rows (sequences decoding at once):
one layer's decode matmuls (qkv, proj, fc, fc_proj) of a model config, per type, at 1, 2,
4, 8 and 16 rows, all row counts alternating in one process (each round runs every count,
in a rotated order, so each sees the same load). Prints the median time of the set and
its multiple of the 1-row time; 16 rows at 16x would be no batching gain at all, at 1x a
purely memory-bound kernel.

    python bench/quant_rows.py [--backend cpp] [--config medium-model] [--rounds 200]
                               [--threads 1]
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from sllm import backends
from sllm.bench import QUANT_TYPES
from sllm.config import resolve_config
from sllm.quant import quantize

ROWS = (1, 2, 4, 8, 16)


def layer_weights(backend: Any, cfg: Any, qtype: str) -> list[tuple[int, int, Any]]:
    """(K, OC, packed weight) of one layer's decode matmuls, random values."""
    C, F = cfg.embedding_dim, cfg.ffn_hidden_dim
    rng = np.random.default_rng(0)
    out = []
    for K, OC in ((C, 3 * C), (C, C), (C, F), (F, C)):
        w = quantize(rng.standard_normal((OC, K)).astype(np.float32), qtype)
        out.append((K, OC, backend.pack_q(backend.from_numpy(w, np.uint8), qtype)))
    return out


def set_seconds(backend: Any, weights: list[tuple[int, int, Any]], qtype: str,
                arrays: list[tuple[Any, Any]]) -> float:
    """Wall seconds of one pass of every matmul of the set."""
    t0 = time.perf_counter()
    for (_, _, w), (x, out) in zip(weights, arrays, strict=True):
        backend.matmul_q_fwd(out, x, w, None, qtype)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--config", default="medium-model")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    backend = backends.get(args.backend)
    if args.threads:
        backend.set_num_threads(args.threads)
    cfg = resolve_config(args.config)
    rng = np.random.default_rng(1)
    print(f"{args.backend}, {args.config}: one layer's decode matmuls, median over "
          f"{args.rounds} rounds")
    print(f"{'type':6s}" + "".join(f"{f'{n} rows':>18s}" for n in ROWS))
    for qtype in QUANT_TYPES:
        weights = layer_weights(backend, cfg, qtype)
        arrays = {n: [(backend.from_numpy(rng.standard_normal((n, K)).astype(np.float32)),
                       backend.zeros((n, OC))) for K, OC, _ in weights] for n in ROWS}
        times: dict[int, list[float]] = {n: [] for n in ROWS}
        for r in range(args.rounds + 1):  # round 0 warms up
            for n in ROWS[r % len(ROWS):] + ROWS[:r % len(ROWS)]:
                t = set_seconds(backend, weights, qtype, arrays[n])
                if r:
                    times[n].append(t)
        med = {n: float(np.median(times[n])) for n in ROWS}
        print(f"{qtype:6s}" + "".join(f"{med[n] * 1e6:9.1f} us {med[n] / med[1]:5.1f}x"
                                      for n in ROWS))


if __name__ == "__main__":
    main()
