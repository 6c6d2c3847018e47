"""Quantized matmul (matmul_q_fwd) in each wasm-simd module, alternating in one process:
the extmul build (sllm_simd128.wasm) against the compat build wasmer 1.x accepts
(sllm_simd128_compat.wasm, extend + i32x4.dot_i16x8_s), on the decode GEMV and a prefill
GEMM of small-model's shapes. Prints medians and compat / extmul time ratios.

    python bench/wasm_quant.py [--runtime wasmtime|wasmer] [--rounds 7]

Under wasmer only the compat module loads; run it under wasmtime for the comparison and
under wasmer (build/venv310) for the compat module's own figures there.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from sllm.backends.wasm import WasmSimdBackend
from sllm.backends.wasm_runtime import RuntimeUnavailable
from sllm.quant import quantize

MODULES = {"extmul": "sllm_simd128.wasm", "compat": "sllm_simd128_compat.wasm"}
# (label, N, K, OC): small-model's decode GEMVs (fc, lm_head) and a 64-token prefill
SHAPES = [("fc GEMV 1x128x512", 1, 128, 512), ("lm_head GEMV 1x128x5000", 1, 128, 5000),
          ("fc_proj GEMV 1x512x128", 1, 512, 128), ("prefill fc 64x128x512", 64, 128, 512)]


def module_backend(filename: str, runtime: str | None) -> WasmSimdBackend:
    """wasm-simd forced onto one module."""
    cls = type(f"Only_{filename}", (WasmSimdBackend,),
               {"modules": ((filename, False, "simd128"),), "_probed": {}})
    return cls(runtime)


def seconds_per_call(backend: WasmSimdBackend, N: int, K: int, OC: int, qtype: str) -> float:
    """Median seconds of one matmul_q_fwd call, over enough calls to last ~20 ms."""
    rng = np.random.default_rng(0)
    x = backend.from_numpy(rng.standard_normal((N, K)).astype(np.float32))
    wq = backend.from_numpy(quantize(rng.standard_normal((OC, K)).astype(np.float32), qtype),
                            np.uint8)
    out = backend.zeros((N, OC))
    backend.matmul_q_fwd(out, x, wq, None, qtype)
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.02:
        backend.matmul_q_fwd(out, x, wq, None, qtype)
        calls += 1
    for arr in (x, wq, out):
        backend.free(arr)
    return (time.perf_counter() - t0) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    backends = {}
    for name, filename in MODULES.items():
        try:
            backends[name] = module_backend(filename, args.runtime)
        except RuntimeUnavailable as e:
            print(f"{name} ({filename}) does not load: {e}")
    runtime = next(iter(backends.values())).runtime.name
    print(f"runtime {runtime}; median microseconds per call over {args.rounds} alternating rounds")
    print(f"{'shape':28s}{'qtype':>6s}" + "".join(f"{n:>10s}" for n in backends)
          + ("   compat/extmul" if len(backends) == 2 else ""))
    for label, N, K, OC in SHAPES:
        for qtype in ("q8_0", "q4_0", "q4_1"):
            times: dict[str, list[float]] = {n: [] for n in backends}
            for _ in range(args.rounds):
                for name, be in backends.items():
                    times[name].append(seconds_per_call(be, N, K, OC, qtype))
            med = {n: float(np.median(t)) * 1e6 for n, t in times.items()}
            ratio = f"{med['compat'] / med['extmul']:15.2f}x" if len(med) == 2 else ""
            print(f"{label:28s}{qtype:>6s}" + "".join(f"{v:10.1f}" for v in med.values()) + ratio)


if __name__ == "__main__":
    main()
