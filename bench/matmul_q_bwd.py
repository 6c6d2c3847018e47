"""matmul_q_bwd, each backend's own kernel against the contract's default (sllm.quant's numpy
dequantize of column slices, then the backend's matmul_fwd), alternating in one process on
the shapes a model hands it in a QLoRA step (N = B*T rows; every quantized weight of the
config, the tied lm_head included). Prints medians and default / native time ratios; on
cpp also the native kernel reading the packed rows (pack_q) instead of ggml's; and the float
GEMM on the dequantized matrix (matmul_fwd), the bound a dequantize-then-GEMM kernel nears.

    python bench/matmul_q_bwd.py [--config medium-model] [--backends cpp,wasm-simd]
                                 [--qtype q4_0] [--batch 8] [--seq 128] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import sllm
from sllm.backends.base import Backend
from sllm.config import ModelConfig, resolve_config
from sllm.quant import dequantize, quantize


def weight_shapes(cfg: ModelConfig) -> list[tuple[str, int, int]]:
    """(label, K, OC) of the matmuls whose input gradient goes through matmul_q_bwd."""
    C, F = cfg.embedding_dim, cfg.ffn_hidden_dim
    return [("qkv", C, 3 * C), ("proj", C, C), ("fc", C, F), ("fc_proj", F, C),
            ("lm_head", C, cfg.vocab_size)]


def seconds(call: Callable[[], Any], budget: float = 0.05) -> float:
    """Mean seconds of one call, over enough calls to last `budget` seconds (one warm-up)."""
    call()
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < budget or calls < 2:
        call()
        calls += 1
    return (time.perf_counter() - t0) / calls


def compare(backend: Backend, N: int, K: int, OC: int, qtype: str,
            rounds: int) -> dict[str, float]:
    """Median seconds of the native kernel on ggml's rows and on the backend's packed rows
    (when pack_q changes them), of the default, and of the float GEMM on the dequantized
    matrix (what the kernel cannot beat), alternating every round."""
    rng = np.random.default_rng(0)
    dout = backend.from_numpy(rng.standard_normal((N, OC)).astype(np.float32))
    rows = backend.from_numpy(quantize(rng.standard_normal((OC, K)).astype(np.float32), qtype),
                              np.uint8)
    packed = backend.pack_q(rows, qtype)
    floats = backend.from_numpy(dequantize(rows, qtype, K))
    dinp = backend.zeros((N, K))
    calls: dict[str, Callable[[], Any]] = {
        "float": lambda: backend.matmul_fwd(dinp, dout, floats, None),
        "native": lambda: backend.matmul_q_bwd(dinp, dout, rows, qtype),
        "default": lambda: Backend.matmul_q_bwd(backend, dinp, dout, rows, qtype)}
    if packed is not rows:
        calls["packed"] = lambda: backend.matmul_q_bwd(dinp, dout, packed, qtype)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(seconds(call))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="medium-model")
    parser.add_argument("--backends", default="cpp,wasm-simd")
    parser.add_argument("--qtype", default="q4_0")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cfg = resolve_config(args.config)
    N = args.batch * args.seq
    print(f"matmul_q_bwd {args.qtype}, {args.config}, N = {N}; median of {args.rounds} "
          f"alternating rounds")
    print(f"{'backend':<10} {'weight':<8} {'N x K x OC':<18} {'native':>10} {'packed':>10} "
          f"{'default':>10} {'float GEMM':>11} {'default/native':>15}")
    for name in args.backends.split(","):
        if name not in sllm.backends.available():
            print(f"{name:<10} not available here")
            continue
        backend = sllm.backends.get(name)
        for label, K, OC in weight_shapes(cfg):
            t = compare(backend, N, K, OC, args.qtype, args.rounds)
            packed = f"{t['packed'] * 1e3:>8.2f}ms" if "packed" in t else f"{'-':>10}"
            print(f"{name:<10} {label:<8} {f'{N}x{K}x{OC}':<18} {t['native'] * 1e3:>8.2f}ms "
                  f"{packed} {t['default'] * 1e3:>8.2f}ms {t['float'] * 1e3:>9.2f}ms "
                  f"{t['default'] / t['native']:>14.2f}x")


if __name__ == "__main__":
    main()
