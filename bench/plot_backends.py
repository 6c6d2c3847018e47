"""Plot `sllm bench --suite train --json` results of several configs: tokens/s per backend
per config, and the speed-up of each roadmap phase over the one before it.

    python bench/plot_backends.py OUT.png RESULT.json [RESULT.json ...]
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PHASES = [("wasm", "numpy"), ("wasm-simd", "wasm"), ("cpp", "numpy"), ("cpp", "torch")]


def tokens_per_s(report: dict) -> dict[str, float]:
    """Training tokens/s by backend in one report."""
    return {res["backend"]: r["tokens_per_s"] for res in report["results"]
            for r in res.get("rows", []) if r["suite"] == "train"}


def main(out: str, paths: list[str]) -> None:
    """Draw both panels into `out`."""
    reports = {Path(p).stem: json.load(open(p)) for p in paths}
    rates = {name: tokens_per_s(rep) for name, rep in reports.items()}
    backends = sorted({b for r in rates.values() for b in r})
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        xs = [j + i * width for j in range(len(rates))]
        left.bar(xs, [r.get(backend, 0) for r in rates.values()], width, label=backend)
    left.set_xticks([j + 0.4 - width / 2 for j in range(len(rates))], list(rates))
    left.set_yscale("log")
    left.set_ylabel("training tokens/s (log)")
    left.set_title("Training step throughput per backend")
    left.legend()
    labels = [f"{a} / {b}" for a, b in PHASES]
    width = 0.8 / len(rates)
    for i, (name, r) in enumerate(rates.items()):
        ratios = [r[a] / r[b] if a in r and b in r else 0 for a, b in PHASES]
        right.bar([j + i * width for j in range(len(PHASES))], ratios, width, label=name)
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(PHASES))], labels)
    right.axhline(1.0, color="gray", lw=0.8)
    right.set_ylabel("speed-up (x)")
    right.set_title("Speed-up per phase (measured side by side)")
    right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
