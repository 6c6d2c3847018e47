"""`sllm train` against a plain PyTorch loop on nanoGPT's baby GPT, back to back.

    python bench/e2e_baby_gpt.py tinyshakespeare.txt --rounds 2 --threads 2 \
        --torch-python .venv/bin/python

Each round runs the whole training (2,000 steps by default) through the `sllm` command
line (cpp backend), then bench/torch_loop.py, each in its own process, and records the
load average (uptime) before and after. Prints a markdown table of wall times, validation
losses and the ratio sllm / torch per round (< 1: sllm is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLLM_ARGS = ["--config", str(HERE.parent / "configs" / "baby-gpt.json"), "--tokenizer", "char",
             "--val-fraction", "0.1", "--batch-size", "12", "--seq-len", "64",
             "--optimizer", "adamw", "--lr", "1e-3", "--min-lr", "1e-4", "--warmup", "100",
             "--betas", "0.9,0.99", "--weight-decay", "0.1", "--grad-clip", "1.0",
             "--eval-batches", "20"]


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def run_sllm(corpus: str, steps: int, eval_every: int, threads: int, backend: str,
             out: str) -> dict:
    """One `sllm train` run; wall time of the whole command, final losses from metrics.jsonl."""
    sllm = shutil.which("sllm", path=str(Path(sys.executable).parent)) or "sllm"
    env = {**os.environ, "SLLM_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run([sllm, "train", "--corpus", corpus, "--steps", str(steps), "--eval-every",
                    str(eval_every), "--backend", backend, "--out", out, *SLLM_ARGS], env=env,
                   check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    lines = [json.loads(x) for x in Path(out, "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in lines if "val_loss" in r]
    return {"seconds": seconds, "loss": lines[-1]["loss"], "val_loss": val[-1]}


def run_torch(python: str, corpus: str, steps: int, eval_every: int, threads: int,
              out: str) -> dict:
    """One bench/torch_loop.py run; wall time of the whole process."""
    t0 = time.perf_counter()
    done = subprocess.run([python, str(HERE / "torch_loop.py"), corpus, "--steps", str(steps),
                           "--eval-every", str(eval_every), "--threads", str(threads),
                           "--out", out], check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default="cpp")
    p.add_argument("--torch-python", default=sys.executable)
    a = p.parse_args()
    print("| round | sllm s | sllm val | torch s | torch val | sllm / torch | load before..after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        for r in range(a.rounds):
            before = load()
            s = run_sllm(a.corpus, a.steps, a.eval_every, a.threads, a.backend, f"{tmp}/sllm{r}")
            t = run_torch(a.torch_python, a.corpus, a.steps, a.eval_every, a.threads,
                          f"{tmp}/torch{r}")
            print(f"| {r + 1} | {s['seconds']:.1f} | {s['val_loss']:.3f} | {t['seconds']:.1f} | "
                  f"{t['val_loss']:.3f} | {s['seconds'] / t['seconds']:.2f}x | "
                  f"{before:.1f}..{load():.1f} |", flush=True)


if __name__ == "__main__":
    main()
