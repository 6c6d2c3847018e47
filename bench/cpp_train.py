"""Training and generation throughput: cpp vs numpy vs PyTorch, side by side.

Each (config, backend) runs in its own worker process with the same thread count
(OpenMP, OpenBLAS and torch all set to it), interleaved so machine noise hits all alike.
Training: tokens/s of forward_backward + AdamW step (median over steps after warm-up).
Generation: tokens/s sampling with the KV cache, batch 1.

    python bench/cpp_train.py [--threads 2] [--steps 5] [--omp-wait-policy passive]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIGS = {  # name: (model config, batch, seq_len)
    "A": (dict(vocab_size=65, embedding_dim=128, num_layers=4, num_heads=4,
               ffn_hidden_dim=512), 12, 64),
    "B": (dict(vocab_size=5000, embedding_dim=128, num_layers=4, num_heads=4,
               ffn_hidden_dim=512), 16, 128),
    "C": (dict(vocab_size=8000, embedding_dim=256, num_layers=6, num_heads=8,
               ffn_hidden_dim=1024), 16, 128),
    "seed": (dict(vocab_size=400, embedding_dim=32, num_layers=2, num_heads=1,
                  ffn_hidden_dim=128), 16, 64),
}


def _config(name: str):
    import sllm
    cfg, B, T = CONFIGS[name]
    return sllm.ModelConfig(**cfg, dropout=0.0, max_seq_len=max(T, 128)), B, T


def _median_rate(step, tokens: int, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return tokens / float(np.median(times))


def train_rate(backend: str, name: str, steps: int, threads: int) -> float:
    """Training tokens/s of `backend` ("cpp", "numpy" or "torch") on config `name`."""
    cfg, B, T = _config(name)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    if backend == "torch":
        import torch
        sys.path.insert(0, str(HERE))
        import torch_ref
        model, opt = torch_ref.make(cfg, threads)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        return _median_rate(lambda: torch_ref.train_step(model, opt, tx, ty), B * T, steps)
    import sllm
    model = sllm.SLLM(cfg, backend=backend)
    if backend == "cpp":
        model.backend.set_num_threads(threads)
    opt = sllm.optim.AdamW(model, lr=1e-3)

    def step():
        model.forward_backward(x, y)
        opt.step()
    return _median_rate(step, B * T, steps)


def generate_rate(backend: str, name: str, threads: int, new_tokens: int = 100) -> float:
    """Sampling tokens/s with the KV cache, batch 1, a 16-token prompt."""
    cfg, _, _ = _config(name)
    prompt = list(range(1, 17))
    if backend == "torch":
        sys.path.insert(0, str(HERE))
        import torch_ref
        model, _ = torch_ref.make(cfg, threads)
        run = lambda: torch_ref.generate(model, prompt, new_tokens)  # noqa: E731
    else:
        import sllm
        model = sllm.SLLM(cfg, backend=backend).eval()
        if backend == "cpp":
            model.backend.set_num_threads(threads)
        run = lambda: model.generate(prompt, new_tokens, seed=0)  # noqa: E731
    return _median_rate(run, new_tokens, 3, warmup=1)


def _worker(args: argparse.Namespace) -> None:
    rate = (generate_rate if args.what == "generate" else train_rate)
    kwargs = dict(threads=args.threads)
    if args.what == "train":
        kwargs["steps"] = args.steps
    print(json.dumps(rate(args.backend, args.config, **kwargs)))


def _spawn(what: str, backend: str, config: str, threads: int, steps: int,
           wait_policy: str) -> float:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "SLLM_NUM_THREADS": str(threads)}
    if wait_policy != "default":  # the same OpenMP policy for torch and cpp
        env["OMP_WAIT_POLICY"] = wait_policy
    cmd = [sys.executable, __file__, "--worker", what, backend, config, "--threads",
           str(threads), "--steps", str(steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=3, metavar=("WHAT", "BACKEND", "CONFIG"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--configs", default="A,B,C,seed")
    p.add_argument("--omp-wait-policy", default="default", choices=["default", "passive"],
                   help="default: each library's own (sllm's cpp loads OpenMP passive unless "
                        "told otherwise, torch spins); passive: OMP_WAIT_POLICY=passive for all")
    args = p.parse_args()
    if args.worker:
        args.what, args.backend, args.config = args.worker
        _worker(args)
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"threads={args.threads}, OMP wait policy {args.omp_wait_policy}, "
          f"load average at start {load:.2f}")
    print("| run | cpp tok/s | numpy tok/s | torch tok/s | cpp/numpy | cpp/torch |")
    print("|---|---|---|---|---|---|")
    jobs = [("train", c) for c in args.configs.split(",")] + [("generate", "B")]
    for what, config in jobs:
        r = {b: _spawn(what, b, config, args.threads, args.steps, args.omp_wait_policy)
             for b in ("cpp", "numpy", "torch")}
        print(f"| {what} {config} | {r['cpp']:.0f} | {r['numpy']:.0f} | {r['torch']:.0f} | "
              f"{r['cpp'] / r['numpy']:.2f} | {r['cpp'] / r['torch']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
