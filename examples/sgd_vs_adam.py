"""SGD versus Adam on the same data, the same model and the same batches (roadmap 0.4.4).

Trains one small model twice from the same initial weights, once with SGD (momentum 0.9)
and once with Adam, and plots both learning curves. Everything goes under --out (default
runs/sgd-vs-adam, which git ignores): the runs in OUT/sgd and OUT/adam, the plot in
OUT/sgd-vs-adam.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sllm.plot import plot_runs
from sllm.train import TrainConfig, prepare

MODEL = {"vocabSize": 1000, "embeddingDim": 64, "numLayers": 2, "numHeads": 4,
         "ffnHiddenDim": 256, "dropout": 0.0, "maxSeqLen": 64}
RUNS = {"SGD lr 0.1, momentum 0.9": {"optimizer": "sgd", "lr": 0.1, "min_lr": 0.1},
        "Adam lr 3e-3": {"optimizer": "adam", "lr": 3e-3, "min_lr": 3e-3}}


def main(argv: list[str] | None = None) -> None:
    """Run both optimizers, print their final losses, write the plot."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--out", default="runs/sgd-vs-adam", help="directory for the runs and the plot")
    p.add_argument("--backend", default="auto")
    p.add_argument("--chars", type=int, default=1_000_000, help="demo corpus size")
    args = p.parse_args(argv)
    dirs = {}
    for label, opt in RUNS.items():
        out = Path(args.out) / opt["optimizer"]
        cfg = TrainConfig(model=MODEL, demo_chars=args.chars, tokenizer="word", vocab_size=1000,
                          steps=args.steps, batch_size=16, seq_len=64, schedule="constant",
                          weight_decay=0.0, eval_every=max(args.steps // 10, 5), eval_batches=8,
                          log_every=5, checkpoint_every=0, out=str(out), backend=args.backend,
                          **opt)
        result = prepare(cfg, progress=False, overwrite=True).run()  # a rerun replaces its runs
        print(f"{label:28s} train loss {result.train_loss:.3f}  val loss "
              f"{result.best_val_loss:.3f}  ({result.seconds:.0f} s)")
        dirs[label] = out
    plot = Path(args.out) / "sgd-vs-adam.png"
    plot_runs(dirs, str(plot), title="SGD vs Adam: same model, data and batches")
    print(f"wrote {plot}")


if __name__ == "__main__":
    main()
