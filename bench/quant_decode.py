"""Batch-1 decode of one model in float32 and each quantized type, on one backend,
alternating in one process: every round decodes once per type (in a rotated order), so
each type sees the same machine load. Prints per type the median tokens/s and the median
of the per-round ratios to float32 (> 1: the quantized model is faster).

    python bench/quant_decode.py [--backend cpp|wasm-simd|...] [--config small-model]
                                 [--rounds 21] [--tokens 64] [--threads N] [--ggml-rows]

The models share their float weights (seed 0); the quantized ones are made by
SLLM.quantize, so their weights are stored as the backend packs them (Backend.pack_q).
--ggml-rows adds each type once more on ggml's rows as the files hold them (a backend
whose pack_q is skipped: "q4_0 rows"), the A/B of the packed layout.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import sllm
from sllm.backends import get as get_backend
from sllm.bench import QUANT_TYPES

PROMPT = list(range(16))


def models(backend: str, config: str, ggml_rows: bool = False) -> dict[str, sllm.SLLM]:
    """float32 and each quantized type, the same weights (with ggml_rows, each type on
    ggml's rows too)."""
    out = {"f32": sllm.SLLM(config, backend=backend, seed=0)}
    for qtype in QUANT_TYPES:
        out[qtype] = sllm.SLLM(config, backend=backend, seed=0).quantize(qtype)
    for qtype in QUANT_TYPES if ggml_rows else ():
        unpacked = type(get_backend(backend))()  # its own instance: pack_q skipped there only
        unpacked.pack_q = lambda wq, qtype: wq  # type: ignore[method-assign]
        out[f"{qtype} rows"] = sllm.SLLM(config, backend=unpacked, seed=0).quantize(qtype)
    return out


def seconds(model: sllm.SLLM, tokens: int) -> float:
    """Wall seconds of one greedy decode of `tokens` tokens after the prompt."""
    t0 = time.perf_counter()
    model.generate(PROMPT, tokens, temperature=0)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--config", default="small-model")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ggml-rows", action="store_true")
    args = parser.parse_args()
    if args.threads:
        os.environ["SLLM_NUM_THREADS"] = str(args.threads)
    ms = models(args.backend, args.config, args.ggml_rows)
    names = list(ms)
    for m in ms.values():  # warm up: caches, packed weights, the module's first calls
        seconds(m, args.tokens)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            times[n].append(seconds(ms[n], args.tokens))
    f32 = np.array(times["f32"])
    print(f"{args.backend}, {args.config}, {args.tokens} tokens after a {len(PROMPT)}-token "
          f"prompt, {args.rounds} alternating rounds; load {os.getloadavg()[0]:.1f}")
    print(f"{'type':10s}{'tok/s (median)':>16s}{'vs f32 (median of rounds)':>28s}"
          f"{'rounds faster':>15s}")
    for n in names:
        t = np.array(times[n])
        ratio = f32 / t
        print(f"{n:10s}{args.tokens / np.median(t):16,.0f}{np.median(ratio):27.2f}x"
              f"{int((ratio > 1).sum()):>9d}/{len(t)}")


if __name__ == "__main__":
    main()
