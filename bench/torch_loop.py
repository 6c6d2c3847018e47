"""nanoGPT's "baby GPT" as a plain PyTorch 2 training loop, the yardstick for `sllm train`.

    python bench/torch_loop.py tinyshakespeare.txt --threads 2 --out /tmp/torch-baby

Character-level data as nanoGPT's shakespeare_char (sorted characters, 90/10 split), the
model of configs/baby-gpt.json (tied embeddings), AdamW (lr 1e-3 -> 1e-4 cosine after 100
warmup steps, betas 0.9/0.99, weight decay 0.1 on matrices), clipping 1.0, an evaluation
every 250 steps over 20 fixed validation batches, a checkpoint at the end. Prints one JSON
line: wall seconds (including the data preparation), the last train and validation losses.
torch is not a dependency of sllm; install it into a benchmark environment.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_ref


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus")
    p.add_argument("--config", default=str(Path(__file__).resolve().parent.parent
                                           / "configs" / "baby-gpt.json"))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", default="runs/torch-baby-gpt")
    a = p.parse_args()
    t0 = time.perf_counter()
    import sllm  # only for the config reader
    text = Path(a.corpus).read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(ids))
    cfg = sllm.ModelConfig.from_json(a.config)
    cfg = dataclasses.replace(cfg, vocab_size=len(chars))
    model, opt = torch_ref.make(cfg, a.threads, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    os.makedirs(a.out, exist_ok=True)
    losses = torch_ref.train_loop(model, opt, ids[:cut], ids[cut:], a.batch_size, a.seq_len,
                                  a.steps, a.eval_every, a.eval_batches, a.out)
    print(json.dumps({"seconds": time.perf_counter() - t0, "threads": a.threads,
                      "torch": torch.__version__, **losses}))


if __name__ == "__main__":
    main()
