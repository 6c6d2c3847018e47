"""GEMM GFLOP/s of the cpp backend vs numpy (OpenBLAS) on the shapes the model runs.

Every forward shape (out = x @ W + b), and the two backward forms (dx = dy @ W^T and
dW += x^T @ dy), for configs A, B and C at batch*seq rows; 1 and 2 threads, each thread
count in its own process so OpenBLAS and OpenMP both start with it. Run side by side:

    python bench/cpp_gemm.py            # prints a markdown table of GFLOP/s and ratios
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

CONFIGS = {  # name: (rows = B*T, C, F, V)
    "A": (12 * 64, 128, 512, 65),
    "B": (16 * 128, 128, 512, 5000),
    "C": (16 * 128, 256, 1024, 8000),
}


def shapes(rows: int, C: int, F: int, V: int) -> list[tuple[str, int, int, int]]:
    """(label, M, K, N) of every forward matmul of one layer and the head."""
    return [("qkv", rows, C, 3 * C), ("proj", rows, C, C), ("fc", rows, C, F),
            ("fc_proj", rows, F, C), ("lm_head", rows, C, V)]


def best_time(fn: Callable[[], object], min_time: float = 0.3) -> float:
    """Best wall time of fn over repeated calls (one warm-up) lasting at least min_time."""
    fn()
    best, spent = float("inf"), 0.0
    while spent < min_time:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return best


def _cases(cpp: Any, x: np.ndarray, w: np.ndarray, b: np.ndarray, dy: np.ndarray,
           out: np.ndarray, dx: np.ndarray, dw: np.ndarray) -> dict[str, tuple[Callable[[], object], ...]]:
    """form -> (the cpp kernel call, the numpy equivalent) on these arrays."""
    return {
        "fwd": (lambda: cpp.matmul_fwd(out, x, w, b),
                lambda: np.add(np.matmul(x, w, out=out), b, out=out)),
        "bwd dx+dW": (lambda: cpp.matmul_bwd(dx, dw, None, dy, x, w),
                      lambda: (np.matmul(dy, w.T, out=dx), np.add(dw, x.T @ dy, out=dw))),
    }


def measure(threads: int) -> list[dict]:
    """Run inside a worker whose BLAS/OpenMP thread counts are already `threads`."""
    from sllm import backends
    cpp = backends.get("cpp")
    cpp.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for cfg, dims in CONFIGS.items():
        for label, M, K, N in shapes(*dims):
            x = rng.standard_normal((M, K), np.float32)
            w = rng.standard_normal((K, N), np.float32)
            b = rng.standard_normal(N, np.float32)
            dy, out = rng.standard_normal((M, N), np.float32), np.empty((M, N), np.float32)
            dx, dw = np.empty((M, K), np.float32), np.zeros((K, N), np.float32)
            flops = 2.0 * M * K * N
            for form, (mine, ref) in _cases(cpp, x, w, b, dy, out, dx, dw).items():
                t_cpp, t_np = best_time(mine), best_time(ref)
                rows.append({"config": cfg, "shape": f"{label} {M}x{K}x{N}", "form": form,
                             "threads": threads, "cpp": flops * (2 if form != "fwd" else 1)
                             / t_cpp / 1e9, "numpy": flops * (2 if form != "fwd" else 1)
                             / t_np / 1e9})
    return rows


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(measure(int(sys.argv[2]))))
        return
    results = []
    for threads in (1, 2):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads),
               "OMP_NUM_THREADS": str(threads), "SLLM_NUM_THREADS": str(threads)}
        out = subprocess.run([sys.executable, __file__, "--worker", str(threads)], env=env,
                             capture_output=True, text=True, check=True).stdout
        results += json.loads(out.strip().splitlines()[-1])
    print("| config | shape (MxKxN) | pass | threads | cpp GFLOP/s | numpy GFLOP/s | cpp/numpy |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['shape']} | {r['form']} | {r['threads']} | {r['cpp']:.1f} "
              f"| {r['numpy']:.1f} | {r['cpp'] / r['numpy']:.2f} |")


if __name__ == "__main__":
    main()
