"""Training-step speed of backends side by side on one corpus and model config.

`python bench/train_backends.py CORPUS --config configs/baby-gpt.json --backends numpy,wasm-simd`
alternates the backends for --rounds rounds of --steps steps each (forward_backward,
clip_grad_norm, AdamW step on the same batches) and prints seconds, tokens/s and the
ratio to the first backend.
"""
from __future__ import annotations

import argparse
import time

import sllm
from sllm.bench import train_step
from sllm.data import TokenData
from sllm.optim import AdamW
from sllm.tokenizer import CharTokenizer, read_text


def seconds_for(backend: str, cfg: dict, data: TokenData, steps: int) -> float:
    """Wall time of `steps` training steps of a fresh model on `backend`."""
    model = sllm.SLLM(cfg, backend=backend)
    opt = AdamW(model, 1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    start = time.perf_counter()
    for step in range(steps):
        train_step(model, opt, *data.train_batch(step))
    return time.perf_counter() - start


def main() -> None:
    """Parse the options and print one line per backend."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus")
    p.add_argument("--config", default="configs/baby-gpt.json")
    p.add_argument("--backends", default="numpy,wasm-simd")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=64)
    args = p.parse_args()
    text = read_text(args.corpus)
    tok = CharTokenizer.train(text)
    data = TokenData.from_text(text, tok, args.seq_len, args.batch_size, 0.1)
    cfg = {**sllm.ModelConfig.from_json(args.config).to_dict(), "vocabSize": tok.vocab_size}
    names = args.backends.split(",")
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            times[name].append(seconds_for(name, cfg, data, args.steps))
    tokens = args.steps * args.batch_size * args.seq_len
    base = min(times[names[0]])
    for name in names:
        best = min(times[name])
        print(f"{name:10s} {', '.join(f'{t:.1f}' for t in times[name])} s   "
              f"{tokens / best:,.0f} tokens/s   {base / best:.2f}x")


if __name__ == "__main__":
    main()
