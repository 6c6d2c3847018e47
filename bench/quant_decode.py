"""Batch-1 decode of one model in float32 and each quantized type, on one backend,
alternating in one process: every round decodes once per type (in a rotated order), so
each type sees the same machine load. Prints per type the median tokens/s and the median
of the per-round ratios to float32 (> 1: the quantized model is faster).

    python bench/quant_decode.py [--backend cpp|wasm-simd|...] [--config small-model]
                                 [--rounds 21] [--tokens 64] [--threads N] [--ggml-rows]
                                 [--unfused] [--cpu-time]

The models share their float weights (seed 0); the quantized ones are made by
SLLM.quantize, so their weights are stored as the backend packs them (Backend.pack_q).
--ggml-rows adds each type once more on ggml's rows as the files hold them (a backend
whose pack_q is skipped: "q4_0 rows"), the A/B of the packed layout. --unfused adds each
type once more decoding every layer kernel by kernel ("q4_0 unfused"): the A/B of the
backend's fused decode_block, where it has one. --cpu-time times each decode by this
thread's CPU time instead of the wall clock (a loaded machine's preemptions left out; for
one-thread backends such as wasm).
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import sllm
from sllm.backends import get as get_backend
from sllm.bench import QUANT_TYPES

PROMPT = list(range(16))


def models(backend: str, config: str, ggml_rows: bool = False,
           unfused: bool = False) -> dict[str, sllm.SLLM]:
    """float32 and each quantized type, the same weights (with ggml_rows, each type on
    ggml's rows too; with unfused, each type decoding kernel by kernel too)."""
    out = {"f32": sllm.SLLM(config, backend=backend, seed=0)}
    for qtype in QUANT_TYPES:
        out[qtype] = sllm.SLLM(config, backend=backend, seed=0).quantize(qtype)
    for qtype in ("f32",) + QUANT_TYPES if unfused else ():
        model = sllm.SLLM(config, backend=backend, seed=0)
        model = model.quantize(qtype) if qtype != "f32" else model
        out[f"{qtype} unfused"] = kernel_line(model)
    for qtype in QUANT_TYPES if ggml_rows else ():
        unpacked = type(get_backend(backend))()  # its own instance: pack_q skipped there only
        unpacked.pack_q = lambda wq, qtype: wq  # type: ignore[method-assign]
        out[f"{qtype} rows"] = sllm.SLLM(config, backend=unpacked, seed=0).quantize(qtype)
    return out


def kernel_line(model: sllm.SLLM) -> sllm.SLLM:
    """`model`, its decode steps running every layer kernel by kernel (no fused block)."""
    no_blocks: list[Any] = [None] * model.config.num_layers

    def none(layers: Any = None) -> list[Any]:
        return no_blocks
    model._fused_blocks = none  # type: ignore[method-assign]
    model._blocks = no_blocks
    return model


def seconds(model: sllm.SLLM, tokens: int,
            clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds (wall, or `clock`'s) of one greedy decode of `tokens` tokens after the prompt."""
    t0 = clock()
    model.generate(PROMPT, tokens, temperature=0)
    return clock() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--config", default="small-model")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ggml-rows", action="store_true")
    parser.add_argument("--unfused", action="store_true")
    parser.add_argument("--cpu-time", action="store_true")
    args = parser.parse_args()
    if args.threads:
        os.environ["SLLM_NUM_THREADS"] = str(args.threads)
    ms = models(args.backend, args.config, args.ggml_rows, args.unfused)
    names = list(ms)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    for m in ms.values():  # warm up: caches, packed weights, the module's first calls
        seconds(m, args.tokens)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            times[n].append(seconds(ms[n], args.tokens, clock))
    f32 = np.array(times["f32"])
    print(f"{args.backend}, {args.config}, {args.tokens} tokens after a {len(PROMPT)}-token "
          f"prompt, {args.rounds} alternating rounds{', thread CPU time' if args.cpu_time else ''}"
          f"; load {os.getloadavg()[0]:.1f}")
    print(f"{'type':13s}{'tok/s (median)':>16s}{'vs f32 (median of rounds)':>28s}"
          f"{'rounds faster':>15s}")
    for n in names:
        t = np.array(times[n])
        ratio = f32 / t
        print(f"{n:13s}{args.tokens / np.median(t):16,.0f}{np.median(ratio):27.2f}x"
              f"{int((ratio > 1).sum()):>9d}/{len(t)}")


if __name__ == "__main__":
    main()
