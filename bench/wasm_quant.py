"""Quantized matmul (matmul_q_fwd) in each wasm-simd module, on ggml's rows and on the
packed rows a model holds (pack_q), alternating in one process: the relaxed build, the
extmul build (sllm_simd128.wasm) and the compat build wasmer 1.x accepts
(sllm_simd128_compat.wasm, extend + i32x4.dot_i16x8_s), on the decode GEMVs and a prefill
GEMM of small-model's shapes. Prints median microseconds per call and, per module, the
packed / ggml rows time ratio.

    python bench/wasm_quant.py [--runtime wasmtime|wasmer] [--rounds 7]

Under wasmer only the compat module loads; run it under wasmtime for the other modules and
under wasmer (a Python 3.10 venv, as .ci/wasmer.sh builds) for the compat module there.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from sllm.backends.wasm import WasmSimdBackend
from sllm.backends.wasm_runtime import RuntimeUnavailable
from sllm.quant import quantize

MODULES = {"relaxed": ("sllm_relaxed.wasm", True), "extmul": ("sllm_simd128.wasm", False),
           "compat": ("sllm_simd128_compat.wasm", False)}
# (label, N, K, OC): small-model's decode GEMVs (fc, lm_head) and a 64-token prefill
SHAPES = [("fc GEMV 1x128x512", 1, 128, 512), ("lm_head GEMV 1x128x5000", 1, 128, 5000),
          ("fc_proj GEMV 1x512x128", 1, 512, 128), ("prefill fc 64x128x512", 64, 128, 512)]


def module_backend(filename: str, relaxed: bool, runtime: str | None) -> WasmSimdBackend:
    """wasm-simd forced onto one module."""
    cls = type(f"Only_{filename}", (WasmSimdBackend,),
               {"modules": ((filename, relaxed, "simd128"),), "_probed": {}})
    return cls(runtime)


def seconds_per_call(backend: WasmSimdBackend, N: int, K: int, OC: int, qtype: str,
                     packed: bool) -> float:
    """Mean seconds of one matmul_q_fwd call, over enough calls to last ~20 ms."""
    rng = np.random.default_rng(0)
    x = backend.from_numpy(rng.standard_normal((N, K)).astype(np.float32))
    rows = backend.from_numpy(quantize(rng.standard_normal((OC, K)).astype(np.float32), qtype),
                              np.uint8)
    wq = backend.pack_q(rows, qtype) if packed else rows
    out = backend.zeros((N, OC))
    backend.matmul_q_fwd(out, x, wq, None, qtype)
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.02:
        backend.matmul_q_fwd(out, x, wq, None, qtype)
        calls += 1
    seconds = (time.perf_counter() - t0) / calls
    for arr in (x, rows, out) + ((wq,) if packed else ()):
        backend.free(arr)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    backends = {}
    for name, (filename, relaxed) in MODULES.items():
        try:
            backends[name] = module_backend(filename, relaxed, args.runtime)
        except RuntimeUnavailable as e:
            print(f"{name} ({filename}) does not load: {e}")
    runtime = next(iter(backends.values())).runtime.name
    runs = [(name, packed) for name in backends for packed in (False, True)]
    print(f"runtime {runtime}; median microseconds per call over {args.rounds} alternating "
          f"rounds (rows: ggml's rows, packed: pack_q's); load {os.getloadavg()[0]:.1f}")
    print(f"{'shape':28s}{'qtype':>6s}" + "".join(f"{n + (' packed' if p else ' rows'):>15s}"
                                                  for n, p in runs)
          + "".join(f"{n + ' packed/rows':>20s}" for n in backends))
    for label, N, K, OC in SHAPES:
        for qtype in ("q8_0", "q4_0", "q4_1"):
            times: dict[tuple[str, bool], list[float]] = {run: [] for run in runs}
            for _ in range(args.rounds):
                for name, packed in runs:
                    times[name, packed].append(
                        seconds_per_call(backends[name], N, K, OC, qtype, packed))
            med = {run: float(np.median(t)) * 1e6 for run, t in times.items()}
            ratios = [float(np.median(np.divide(times[n, True], times[n, False])))
                      for n in backends]
            print(f"{label:28s}{qtype:>6s}" + "".join(f"{med[run]:15.1f}" for run in runs)
                  + "".join(f"{r:19.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
