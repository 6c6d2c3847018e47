"""Training and generation throughput: cpp vs numpy vs PyTorch, side by side.

The machine is shared, so the load changes from second to second. Each backend therefore
runs in its own long-lived worker process (same thread count for OpenMP, OpenBLAS and
torch), and the parent interleaves them: in every round each worker times a few steps,
in rotating order. Reported: tokens/s of the best step (closest to an idle machine) and
of the median step, per backend, and their ratios.
Training: sllm.bench.train_step (forward_backward, clip, AdamW). Generation: sampling 100 tokens after a 16-token
prompt with the KV cache, batch 1.

    python bench/cpp_train.py [--threads 2] [--rounds 8] [--configs A,B,C,seed]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
BACKENDS = ("cpp", "cpp-spin", "numpy", "torch", "torch-passive")
# OpenMP's wait policy matters more than anything else on a shared 2-core machine:
# cpp: sllm's default, OMP_WAIT_POLICY=passive (idle threads sleep at once);
# cpp-spin: idle threads spin 300k rounds (~3 ms) first, libgomp's own default, which is
#   what torch uses; faster on an idle machine, far slower when another job holds a core;
# torch-passive: torch with OMP_WAIT_POLICY=passive.
WORKER_ENV = {"cpp-spin": {"OMP_WAIT_POLICY": "active", "GOMP_SPINCOUNT": "300000"},
              "torch-passive": {"OMP_WAIT_POLICY": "passive"}}
CONFIGS: dict[str, tuple[dict[str, Any], int, int]] = {  # name: (model config, batch, seq_len)
    "A": (dict(vocab_size=65, embedding_dim=128, num_layers=4, num_heads=4,
               ffn_hidden_dim=512), 12, 64),
    "B": (dict(vocab_size=5000, embedding_dim=128, num_layers=4, num_heads=4,
               ffn_hidden_dim=512), 16, 128),
    "C": (dict(vocab_size=8000, embedding_dim=256, num_layers=6, num_heads=8,
               ffn_hidden_dim=1024), 16, 128),
    "seed": (dict(vocab_size=400, embedding_dim=32, num_layers=2, num_heads=1,
                  ffn_hidden_dim=128), 16, 64),
    # the llama twins of B and C (configs/llama-small-model.json, llama-medium-model.json)
    "llama-B": (dict(architecture="llama", vocab_size=5000, embedding_dim=128, num_layers=4,
                     num_heads=4, ffn_hidden_dim=368), 16, 128),
    "llama-C": (dict(architecture="llama", vocab_size=8000, embedding_dim=256, num_layers=6,
                     num_heads=8, num_kv_heads=2, ffn_hidden_dim=832), 16, 128),
}
GEN_PROMPT, GEN_TOKENS = list(range(1, 17)), 100


def _config(name: str) -> tuple[Any, int, int]:
    import sllm
    cfg, B, T = CONFIGS[name]
    return sllm.ModelConfig(**cfg, dropout=0.0, max_seq_len=max(T, 128)), B, T


def train_runner(backend: str, name: str, threads: int) -> tuple[Callable[[], object], int]:
    """(one training step, tokens per step) for `backend` on config `name`."""
    cfg, B, T = _config(name)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    if backend.startswith("torch"):
        import torch
        sys.path.insert(0, str(HERE))
        import torch_ref
        tmodel, topt = torch_ref.make(cfg, threads)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        return (lambda: torch_ref.train_step(tmodel, topt, tx, ty)), B * T
    import sllm
    model = sllm.SLLM(cfg, backend=backend.split("-")[0])
    if backend.startswith("cpp"):
        model.backend.set_num_threads(threads)
    opt = sllm.optim.AdamW(model, lr=1e-3)

    from sllm.bench import train_step
    return (lambda: train_step(model, opt, x, y)), B * T


def generate_runner(backend: str, name: str, threads: int) -> tuple[Callable[[], object], int]:
    """(one generation of GEN_TOKENS tokens with the KV cache, GEN_TOKENS)."""
    cfg, _, _ = _config(name)
    if backend.startswith("torch"):
        sys.path.insert(0, str(HERE))
        import torch_ref
        tmodel, _ = torch_ref.make(cfg, threads)
        return (lambda: torch_ref.generate(tmodel, GEN_PROMPT, GEN_TOKENS)), GEN_TOKENS
    import sllm
    model = sllm.SLLM(cfg, backend=backend.split("-")[0]).eval()
    if backend.startswith("cpp"):
        model.backend.set_num_threads(threads)
    return (lambda: model.generate(GEN_PROMPT, GEN_TOKENS, seed=0)), GEN_TOKENS


def serve(what: str, backend: str, config: str, threads: int) -> None:
    """Worker: build the runner, warm up, then for each line N on stdin time N runs."""
    make = generate_runner if what == "generate" else train_runner
    run, tokens = make(backend, config, threads)
    for _ in range(2):
        run()
    print(json.dumps({"tokens": tokens}), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        print(json.dumps(times), flush=True)


def compare(what: str, config: str, threads: int, rounds: int, per_round: int) -> dict:
    """Interleaved timing of every backend; returns {backend: (best tok/s, median tok/s)}."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "SLLM_NUM_THREADS": str(threads)}
    workers = {b: subprocess.Popen([sys.executable, __file__, "--serve", what, b, config,
                                    "--threads", str(threads)], text=True,
                                   env={**env, **WORKER_ENV.get(b, {})},
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
               for b in BACKENDS}
    ins = {b: w.stdin for b, w in workers.items() if w.stdin}  # both pipes exist: PIPE above
    outs = {b: w.stdout for b, w in workers.items() if w.stdout}
    try:
        tokens = {b: json.loads(outs[b].readline())["tokens"] for b in workers}
        times: dict[str, list[float]] = {b: [] for b in BACKENDS}
        for r in range(rounds):
            for b in BACKENDS[r % len(BACKENDS):] + BACKENDS[:r % len(BACKENDS)]:
                ins[b].write(f"{per_round}\n")
                ins[b].flush()
                times[b] += json.loads(outs[b].readline())
    finally:
        for b, w in workers.items():
            ins[b].close()
            w.wait()
    return {b: (tokens[b] / min(t), tokens[b] / float(np.median(t))) for b, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", nargs=3, metavar=("WHAT", "BACKEND", "CONFIG"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--configs", default="A,B,C,seed")
    args = p.parse_args()
    if args.serve:
        what, backend, config = args.serve
        serve(what, backend, config, args.threads)
        return
    print(f"threads={args.threads}, rounds={args.rounds}, load average at start "
          f"{os.getloadavg()[0]:.2f}; tokens/s of the best step (median step in brackets)")
    print("| run | " + " | ".join(BACKENDS) + " | cpp/numpy | cpp/best torch | "
          "best cpp/best torch |")
    print("|---|" + "---|" * (len(BACKENDS) + 3))
    jobs = [("train", c) for c in args.configs.split(",")] + [("generate", "B")]
    for what, config in jobs:
        per_round = 1 if config.endswith("C") or what == "generate" else 3
        r = compare(what, config, args.threads, args.rounds, per_round)
        best = {b: r[b][0] for b in BACKENDS}
        med = {b: r[b][1] for b in BACKENDS}
        print(f"| {what} {config} | " + " | ".join(f"{best[b]:.0f} ({med[b]:.0f})" for b in BACKENDS)
              + f" | {best['cpp'] / best['numpy']:.2f} ({med['cpp'] / med['numpy']:.2f}) | "
              f"{best['cpp'] / max(best['torch'], best['torch-passive']):.2f} "
              f"({med['cpp'] / max(med['torch'], med['torch-passive']):.2f}) | "
              f"{max(best['cpp'], best['cpp-spin']) / max(best['torch'], best['torch-passive']):.2f}"
              " |", flush=True)


if __name__ == "__main__":
    main()
