"""Per-call overhead of the wasm backends' kernel call path, side by side in one run.

Measures, on a 4-element residual_fwd (so the kernel's own work is negligible):
  raw       the zero-argument export through the runtime's fastest path
            (wasmtime: wasmtime_func_call_unchecked; wasmer: its export call)
  public    the same export through wasmtime-py's public Func.__call__ (type-checked)
  backend   the full backend method: array offsets + parameter block + raw call
  numpy     reference.residual_fwd on the same arrays, for scale

    python bench/wasm_overhead.py [--runtime wasmtime|wasmer] [--calls 20000]
"""
from __future__ import annotations

import argparse
import time

from sllm.backends import reference
from sllm.backends.wasm import WasmSimdBackend


def per_call_us(call, calls):
    """Best of three: microseconds per call."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="wasmtime")
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    be = WasmSimdBackend(args.runtime)
    out, a, b = be.zeros(4), be.zeros(4), be.zeros(4)
    be.residual_fwd(out, a, b)  # fills the parameter block for the raw calls below
    raw = be.runtime.kernel("residual_fwd")
    rows = {"raw": per_call_us(raw, args.calls)}
    if args.runtime == "wasmtime":
        func, store = be.runtime._exports["residual_fwd"], be.runtime._store
        rows["public"] = per_call_us(lambda: func(store), args.calls)
    rows["backend"] = per_call_us(lambda: be.residual_fwd(out, a, b), args.calls)
    rows["numpy"] = per_call_us(lambda: reference.residual_fwd(out, a, b), args.calls)
    print(f"runtime {args.runtime}: microseconds per call (best of 3 x {args.calls})")
    for label, us in rows.items():
        print(f"  {label:8s} {us:7.2f} us   {us / rows['raw']:5.1f}x raw")


if __name__ == "__main__":
    main()
