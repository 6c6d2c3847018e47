"""GEMM GFLOP/s: wasm (scalar) vs wasm-simd (SIMD128, and with relaxed-SIMD FMA) vs numpy,
side by side in one run, on 2048x128x512 and on the matmul shapes of a config-B step.

    python bench/wasm_gemm.py [--runtime wasmtime|wasmer] [--repeat 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from sllm.backends.numpy_ref import NumpyBackend
from sllm.backends.wasm import WasmBackend, WasmSimdBackend


class WasmSimd128Backend(WasmSimdBackend):
    """wasm-simd forced onto the plain SIMD128 module (no relaxed FMA)."""

    modules = (("sllm_simd128.wasm", False, "simd128"),)


# (label, N, C, OC, kernel): forward and both backward GEMMs of config B (B*T = 2048, C 128)
SHAPES = [("2048x128x512 fwd", 2048, 128, 512, "fwd"),
          ("qkv fwd 2048x128x384", 2048, 128, 384, "fwd"),
          ("fc_proj fwd 2048x512x128", 2048, 512, 128, "fwd"),
          ("lm_head fwd 2048x128x5000", 2048, 128, 5000, "fwd"),
          ("fc bwd 2048x128x512", 2048, 128, 512, "bwd")]


def gflops(backend, N, C, OC, kernel, repeat):
    """Best-of-repeat GFLOP/s of one matmul kernel call on fresh random operands."""
    rng = np.random.default_rng(0)
    x = backend.from_numpy(rng.standard_normal((N, C)).astype(np.float32))
    w = backend.from_numpy(rng.standard_normal((C, OC)).astype(np.float32))
    b, out = backend.zeros(OC), backend.zeros((N, OC))
    dout, dx, dw = backend.from_numpy(rng.standard_normal((N, OC)).astype(np.float32)), \
        backend.zeros((N, C)), backend.zeros((C, OC))
    call = (lambda: backend.matmul_fwd(out, x, w, b)) if kernel == "fwd" else \
        (lambda: backend.matmul_bwd(dx, dw, b, dout, x, w))
    flops = 2.0 * N * C * OC * (1 if kernel == "fwd" else 2)
    call()
    best = min(_timed(call) for _ in range(repeat))
    for arr in (x, w, b, out, dout, dx, dw):
        backend.free(arr)
    return flops / best / 1e9


def _timed(call):
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    backends = {"numpy": NumpyBackend(), "wasm": WasmBackend(args.runtime),
                "wasm-simd128": WasmSimd128Backend(args.runtime)}
    try:
        backends["wasm-simd(relaxed)"] = WasmSimdBackend(args.runtime)
    except Exception as e:  # noqa: BLE001 - wasmer has no relaxed SIMD
        print(f"relaxed SIMD module unavailable: {e}")
    if backends.get("wasm-simd(relaxed)") and not backends["wasm-simd(relaxed)"].module[1]:
        del backends["wasm-simd(relaxed)"]
    runtime = backends["wasm"].runtime.name
    print(f"runtime: {runtime}; GFLOP/s, best of {args.repeat}")
    print(f"{'shape':28s}" + "".join(f"{n:>20s}" for n in backends) + "   simd/scalar")
    for label, N, C, OC, kernel in SHAPES:
        row = {n: gflops(be, N, C, OC, kernel, args.repeat) for n, be in backends.items()}
        best_simd = max(v for n, v in row.items() if "simd" in n)
        print(f"{label:28s}" + "".join(f"{v:20.1f}" for v in row.values())
              + f"{best_simd / row['wasm']:12.1f}x")


if __name__ == "__main__":
    main()
