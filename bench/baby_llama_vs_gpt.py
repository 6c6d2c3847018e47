"""Baby llama vs baby GPT on tinyshakespeare: both validation curves in one plot, and a table.

Train both runs first with the same settings (docs/llama.md gives the command), then

    python bench/baby_llama_vs_gpt.py RUNS/baby-gpt RUNS/baby-llama -o docs/baby-llama-vs-gpt.png
"""
from __future__ import annotations

import argparse

from sllm.plot import plot_runs, read_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gpt")
    p.add_argument("llama")
    p.add_argument("-o", "--output", default="baby-llama-vs-gpt.png")
    a = p.parse_args()
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
