"""One training step (forward_backward + AdamW) on config B, side by side in one run:
numpy vs wasm vs wasm-simd, in each WebAssembly runtime asked for.

Config B: vocab 5000, C 128, 4 layers, 4 heads, FFN 512, T 128, B 16.

    python bench/wasm_step.py [--runtimes wasmtime,wasmer] [--steps 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import sllm
from sllm.backends.numpy_ref import NumpyBackend
from sllm.backends.wasm import WasmBackend, WasmSimdBackend
from sllm.bench import train_step
from sllm.optim import AdamW

CONFIG_B = sllm.ModelConfig(vocab_size=5000, embedding_dim=128, num_layers=4, num_heads=4,
                            ffn_hidden_dim=512, dropout=0.0, max_seq_len=128)
B, T = 16, 128


def tokens_per_second(backend, steps):
    """Best-of-steps tokens/s of sllm.bench.train_step (after one warm-up)."""
    model = sllm.SLLM(CONFIG_B, backend=backend, seed=0)
    opt = AdamW(model, lr=1e-3)
    rng = np.random.default_rng(0)
    x = rng.integers(0, CONFIG_B.vocab_size, (B, T))
    y = np.roll(x, -1, axis=1)
    best = float("inf")
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        train_step(model, opt, x, y)
        best = min(best, time.perf_counter() - t0)
    return B * T / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", default="wasmtime")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    rows = {"numpy": tokens_per_second(NumpyBackend(), args.steps)}
    for runtime in args.runtimes.split(","):
        for cls in (WasmBackend, WasmSimdBackend):
            backend = cls(runtime)
            label = f"{cls.name} ({runtime}, {backend.module[0]})"
            rows[label] = tokens_per_second(backend, args.steps)
    print(f"config B training step, B={B} T={T}; tokens/s (best of {args.steps})")
    for label, tps in rows.items():
        print(f"  {label:45s} {tps:9.0f} tok/s   {tps / rows['numpy']:5.2f}x numpy")


if __name__ == "__main__":
    main()
