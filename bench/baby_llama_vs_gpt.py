"""Baby llama vs baby GPT on tinyshakespeare: both validation curves in one plot, and a table.

Train both runs first with the same settings (docs/llama.md gives the command), then

    python bench/baby_llama_vs_gpt.py RUNS/baby-gpt RUNS/baby-llama -o docs/baby-llama-vs-gpt.png

The two runs' wall times are only comparable when they ran side by side; `--time N` times
N training steps of each model (batch 12x64, forward_backward + clip + AdamW) in this one
process, alternating the two every step, so both see the same machine load.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import sllm
from sllm.bench import train_step
from sllm.plot import plot_runs, read_metrics

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def time_steps(steps: int, backend: str, threads: int) -> None:
    """Alternate training steps of the two models; print the best and median tokens/s."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 65, (12, 64)), rng.integers(0, 65, (12, 64))
    runs: dict[str, tuple[sllm.SLLM, sllm.optim.AdamW, list[float]]] = {}
    for name in ("baby-gpt", "baby-llama"):
        model = sllm.SLLM(CONFIGS / f"{name}.json", backend=backend)
        model.backend.set_num_threads(threads)
        opt = sllm.optim.AdamW(model, lr=1e-3)
        train_step(model, opt, x, y)  # warm up
        runs[name] = (model, opt, [])
    for _ in range(steps):
        for model, opt, times in runs.values():
            t = time.perf_counter()
            train_step(model, opt, x, y)
            times.append(time.perf_counter() - t)
    for name, (_, _, times) in runs.items():
        print(f"{name}: {x.size / min(times):,.0f} tokens/s best, "
              f"{x.size / float(np.median(times)):,.0f} median ({backend}, {threads} threads)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gpt", nargs="?")
    p.add_argument("llama", nargs="?")
    p.add_argument("-o", "--output", default="baby-llama-vs-gpt.png")
    p.add_argument("--time", type=int, default=0, metavar="N")
    p.add_argument("--backend", default="cpp")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.time:
        time_steps(a.time, a.backend, a.threads)
        return
    runs = {"baby GPT (configs/baby-gpt.json)": a.gpt,
            "baby llama (configs/baby-llama.json)": a.llama}
    plot_runs(runs, a.output, title="tinyshakespeare, char, 2000 steps of 12x64")
    vals = {name: {r["step"]: r["val_loss"] for r in read_metrics(d) if "val_loss" in r}
            for name, d in runs.items()}
    steps = sorted(set.intersection(*(set(v) for v in vals.values())))
    print("| step | " + " | ".join(vals) + " |")
    print("|---|" + "---|" * len(vals))
    for step in steps:
        print(f"| {step} | " + " | ".join(f"{v[step]:.4f}" for v in vals.values()) + " |")
    for name, v in vals.items():
        print(f"{name}: best val loss {min(v.values()):.4f}")


if __name__ == "__main__":
    main()
