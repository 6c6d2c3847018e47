"""`make demo`: train a small model on the built-in corpus of dialogues and stories, then
show what it writes and a few chat turns.

The run is sized to a time budget (default 8 minutes): a few steps are timed first on the
fastest available backend, and the step count is chosen to fit. `--smoke` runs a tiny
version in seconds (used by the test suite).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import sllm
from sllm import backends
from sllm.chat import ChatSession
from sllm.generate import encode_prompt, stream_text
from sllm.train import TrainConfig, prepare

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Once upon a time, there was a", "One day, Anna went to the", "A: Do you have a pet?\nB:"]
CHAT = ["Hello! How are you?", "What do you like to eat for lunch?", "Do you have a pet?"]


def demo_model(smoke: bool) -> dict:
    """configs/small-model.json, with the context cut to the training window."""
    if smoke:
        return {"vocabSize": 1000, "embeddingDim": 32, "numLayers": 2, "numHeads": 2,
                "ffnHiddenDim": 64, "dropout": 0.0, "maxSeqLen": 64}  # room for spelled-out words
    cfg = json.loads((ROOT / "configs" / "small-model.json").read_text())
    return {**cfg, "maxSeqLen": 128, "dropout": 0.0}


def seconds_per_step(model_cfg: dict, vocab: int, batch: int, seq: int, backend: str) -> float:
    """Time a few training steps of a throwaway model of the same shape."""
    model = sllm.SLLM({**model_cfg, "vocabSize": vocab}, backend=backend)
    x = np.random.default_rng(0).integers(0, vocab, (batch, seq))
    model.forward_backward(x, x)
    start = time.perf_counter()
    for _ in range(3):
        model.forward_backward(x, x)
    return (time.perf_counter() - start) / 3 * 1.15  # + optimizer, evals, checkpoints


def train(args: argparse.Namespace) -> sllm.SLLM:
    model_cfg = demo_model(args.smoke)
    batch, seq = (4, 64) if args.smoke else (16, 128)
    backend = args.backend if args.backend != "auto" else backends.available()[0]
    if args.smoke:
        steps = 30
    else:
        per_step = seconds_per_step(model_cfg, 1000, batch, seq, backend)
        steps = int(max(100, min(3000, args.minutes * 60 / per_step)))
        print(f"backend {backend}: {per_step:.2f} s/step -> {steps} steps in ~{args.minutes} min")
    out = Path(args.out)
    cfg = TrainConfig(model=model_cfg, demo_chars=60_000 if args.smoke else 3_000_000,
                      tokenizer="word", vocab_size=2000, backend=backend, steps=steps,
                      batch_size=batch, seq_len=seq, lr=2e-3, min_lr=2e-4,
                      warmup=min(50, steps // 10), weight_decay=0.1, eval_every=max(steps // 6, 1),
                      eval_batches=4, checkpoint_every=max(steps // 3, 1), out=str(out),
                      max_minutes=None if args.smoke else args.minutes * 1.1)
    # A rerun replaces the previous demo's run files, and nothing else in the directory.
    trainer = prepare(cfg, progress=not args.smoke, overwrite=True)
    print(f"{trainer.model.num_parameters():,} parameters, {trainer.tok.vocab_size} words, "
          f"{len(trainer.data.train.ids):,} training tokens")
    result = trainer.run()
    print(f"{result.status}: {result.step} steps in {result.seconds:.0f} s, "
          f"train loss {result.train_loss:.3f}, val loss {result.best_val_loss:.3f}")
    return trainer


def show(trainer, seed: int) -> None:
    model, tok = trainer.model, trainer.tok
    print("\n--- generations ---")
    for i, prompt in enumerate(PROMPTS):
        ids = encode_prompt(tok, prompt)
        text = "".join(stream_text(model, tok, ids, 60, temperature=0.6, top_k=20, seed=seed + i))
        print(f"{prompt}{text}\n")
    print("--- chat ---")
    session = ChatSession(model, tok, max_new_tokens=30, temperature=0.6, top_k=20, seed=seed)
    for line in CHAT:
        print(f"A: {line}")
        print(f"B: {''.join(session.reply(line)).strip()}")


def main(argv: list[str] | None = None) -> None:
    """Parse the options, train, then show generations and chat turns."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    p.add_argument("--backend", default="auto")
    p.add_argument("--out", default=str(ROOT / "runs" / "demo"),
                   help="run directory (default: runs/demo of the checkout, which git ignores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny and fast (for tests)")
    args = p.parse_args(argv)
    plain, warnings.formatwarning = (warnings.formatwarning,
                                     lambda message, *rest, **kw: f"note: {message}\n")
    try:
        trainer = train(args)
        show(trainer, args.seed)
    finally:
        warnings.formatwarning = plain
    print(f"\nmodel saved in {args.out}/model.sllm; try: {sllm_command()} chat {args.out}")


def sllm_command() -> str:
    """How to run `sllm` from here: its name when it is on PATH, else its full path (it is
    installed next to this Python, e.g. .venv/bin/sllm; `source .venv/bin/activate` puts
    it on PATH)."""
    here = Path(sys.executable).parent / "sllm"
    on_path = shutil.which("sllm")
    if on_path and Path(on_path).resolve() == here.resolve():
        return "sllm"
    if not here.exists():
        return "sllm"
    relative = os.path.relpath(here)
    return str(here) if relative.startswith("..") else relative


if __name__ == "__main__":
    main()
