"""The llama kernels native vs the numpy reference they replaced, and grouped-query vs
multi-head attention, alternating in one process.

    python bench/llama_kernels.py [--backends cpp wasm-simd] [--rounds 5] [--threads 2]

Shapes are configs/llama-medium-model.json's training step (B=8, T=256: C=256, 8 query
heads, 2 KV heads of D=32, F=832) and its decode step (one token at position 200, 16
sequences for decode_batch). For each backend:
- each llama kernel (rmsnorm, rope, swiglu, forward and backward) as the backend runs it
  and as the numpy reference runs it on the same arrays (what the backend did before it
  had its own): medians in ms and the speed-up;
- attention with 8 query heads over 2 KV heads (GQA) against 8 over 8 (MHA): the same
  query heads, so time per query head is the time; fwd+bwd, decode and decode_batch.
Rounds alternate every variant, so all see the same machine load.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from sllm import backends
from sllm.backends import reference

B, T, H, HKV, D, F, EPS, THETA = 8, 256, 8, 2, 32, 832, 1e-5, 10000.0
C, SLOTS, POS, MAXT = H * D, 16, 200, 256


def timed(fn: Callable[[], None], min_seconds: float = 0.05) -> float:
    """Seconds per call of fn, over enough calls to last min_seconds."""
    fn()
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - t0) / calls


def llama_calls(be: backends.Backend, rng: np.random.Generator) -> dict[str, tuple]:
    """kernel name -> its arguments, arrays the backend owns."""
    def f(*shape: int, scale: float = 1.0) -> np.ndarray:
        return be.from_numpy(rng.standard_normal(shape).astype(np.float32) * scale)
    N, W = B * T, (H + 2 * HKV) * D
    positions = np.tile(np.arange(T, dtype=np.int32), B)
    x, w, rstd = f(N, C), f(C), be.from_numpy(np.ones(N, np.float32))
    return {
        "rmsnorm_fwd": (f(N, C), rstd, x, w, EPS),
        "rmsnorm_bwd": (f(N, C), f(C), f(N, C), x, w, rstd),
        "rope_fwd": (f(N, W), positions, H, HKV, THETA),
        "rope_bwd": (f(N, W), positions, H, HKV, THETA),
        "swiglu_fwd": (f(N, F), f(N, F, scale=3.0), f(N, F)),
        "swiglu_bwd": (f(N, F), f(N, F), f(N, F), f(N, F, scale=3.0), f(N, F)),
    }


def attention_calls(be: backends.Backend, rng: np.random.Generator,
                    hkv: int) -> dict[str, Callable[[], None]]:
    """Attention with H query heads over hkv KV heads: training, decode, decode_batch."""
    def f(*shape: int) -> np.ndarray:
        return be.from_numpy(rng.standard_normal(shape).astype(np.float32))
    W = (H + 2 * hkv) * D
    qkv, out, dout, dqkv = f(B, T, W), f(B, T, C), f(B, T, C), f(B, T, W)
    saved = be.zeros(be.attention_saved_shape(B, T, H))
    kc, vc = f(1, hkv, MAXT, D), f(1, hkv, MAXT, D)
    skc, svc = f(SLOTS, hkv, MAXT, D), f(SLOTS, hkv, MAXT, D)
    q1, o1, qb, ob = f(1, 1, W), f(1, 1, C), f(SLOTS, 1, W), f(SLOTS, 1, C)
    slots = np.arange(SLOTS, dtype=np.int32)
    positions = (POS - np.arange(SLOTS)).astype(np.int32)

    def train() -> None:
        be.attention_fwd(out, saved, qkv, H, hkv)
        be.attention_bwd(dqkv, dout, qkv, out, saved, H, hkv)
    return {"attention fwd+bwd": train,
            "attention_decode": lambda: be.attention_decode(o1, q1, kc, vc, POS, H, hkv),
            "attention_decode_batch": lambda: be.attention_decode_batch(
                ob, qb, skc, svc, slots, positions, H, hkv)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=["cpp", "wasm-simd"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    for name in args.backends:
        if name not in backends.available():
            print(f"{name}: not available here")
            continue
        be = backends.get(name)
        if args.threads:
            be.set_num_threads(args.threads)
        rng = np.random.default_rng(0)
        kernels = llama_calls(be, rng)
        attn = {hkv: attention_calls(be, rng, hkv) for hkv in (HKV, H)}
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for kernel, call_args in kernels.items():
                for who, fn in (("native", getattr(be, kernel)), ("reference",
                                                                  getattr(reference, kernel))):
                    times.setdefault((kernel, who), []).append(timed(partial(fn, *call_args)))
            for hkv, calls in attn.items():
                for label, fn in calls.items():
                    times.setdefault((label, f"Hkv={hkv}"), []).append(timed(fn))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"\n{name} ({be.capabilities.get('simd')}, threads "
              f"{be.capabilities.get('threads', 1)}), median of {args.rounds} rounds, ms per call")
        print(f"{'kernel':24} {'native':>9} {'reference':>10} {'speed-up':>9}")
        for kernel in kernels:
            n, r = med[(kernel, "native")], med[(kernel, "reference")]
            print(f"{kernel:24} {n:9.3f} {r:10.3f} {r / n:8.1f}x")
        print(f"{'attention, 8 query heads':24} {'GQA Hkv=2':>9} {'MHA Hkv=8':>10} {'GQA/MHA':>9}")
        for label in attn[HKV]:
            g, m = med[(label, f"Hkv={HKV}")], med[(label, f"Hkv={H}")]
            print(f"{label:24} {g:9.3f} {m:10.3f} {g / m:9.2f}")


if __name__ == "__main__":
    main()
