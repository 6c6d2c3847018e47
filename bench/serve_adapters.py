"""Served LoRA adapters vs the bare base, engine-level (the batching engine, no HTTP, and its decode step alone):
16 streams spread over 4 adapters (sllm.lora_bank: one batch step, the base GEMM shared,
each adapter's rows their own delta) against 16 streams on the base alone.

    python bench/serve_adapters.py [--streams 16] [--adapters 4] [--tokens 96] [--rounds 6]
                                   [--token-rows 0]

The model is configs/small-model.json with random weights and a word vocabulary of
tinyshakespeare (bench/serve_load.py's; speed does not depend on the weights' values); the
adapters are rank 8 on every target (attention and MLP), with random A and B. Two engines
on two copies of the model run in one process, their waves alternating (A B B A ...), so
load on the shared machine hits both alike. A wave: --streams greedy requests submitted
at once, tokens/s = generated tokens / the wave's wall time. The target (issue 25):
adapters >= 80% of the base's tokens/s. Prints a table of waves, the median ratio, then
the decode step alone (the two models alternating step by step, medians: the figure least
moved by load) and `uptime`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from serve_load import make_model, prompts

import sllm
from sllm.batching import Engine, Request, Sampling
from sllm.generate import encode_prompt
from sllm.lora import Adapter, LoraConfig
from sllm.lora_bank import AdapterBank
from sllm.tokenizer import from_dict


def random_adapter(model: Any, seed: int, rank: int, token_ids: list[int]) -> Adapter:
    """Rank `rank` on every target, A and B random (B = 0 would skip nothing: same cost),
    and trainable token rows for `token_ids` (random too)."""
    adapter = Adapter.create(model, LoraConfig(rank=rank), seed, token_ids=token_ids)
    rng = np.random.default_rng(seed)
    for t in adapter.tensors.values():
        t[...] = rng.standard_normal(t.shape).astype(np.float32) * 0.02
    return adapter


def wave(engine: Engine, ids: list[list[int]], tokens: int, adapters: list[Any]) -> float:
    """Tokens/s of len(ids) greedy requests submitted at once (request i uses adapters[i])."""
    done, count = threading.Semaphore(0), [0]

    def emit(event: Any) -> None:
        if event.kind != "text":
            count[0] += event.completion_tokens
            done.release()
    t0 = time.perf_counter()
    for prompt, adapter in zip(ids, adapters, strict=True):
        engine.submit(Request(prompt, Sampling(max_tokens=tokens, temperature=0), emit,
                              adapter=adapter))
    for _ in ids:
        done.acquire()
    return count[0] / (time.perf_counter() - t0)


def step_times(base: Any, served: Any, bank: AdapterBank, spread: list[Any], steps: int
               ) -> tuple[float, float]:
    """Median seconds of one decode_batch step of len(spread) rows at position 64: the base
    alone vs the adapters (routed as `spread`), the two alternating step by step."""
    n = len(spread)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, base.config.vocab_size, n)
    slots, positions = np.arange(n), np.full(n, 64)
    caches = base.new_cache(n), served.new_cache(n)
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(steps):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            model = (base, served)[j]
            if j:
                bank.route(spread)
            t0 = time.perf_counter()
            model.decode_batch(tokens, caches[j], slots, positions)
            times[j].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=400, help="decode steps of the step-level A/B")
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--model", type=Path, help="a .sllm model (default: small-model, random)")
    ap.add_argument("--token-rows", type=int, default=0,
                    help="trainable token rows per adapter (the prompts' most frequent ids)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or make_model(Path(tmp) / "small-model.sllm")
        base, served = (sllm.load(path, backend=args.backend) for _ in range(2))
    tok = from_dict(base.tokenizer)
    ids = [encode_prompt(tok, t, warn=False) for t in prompts(args.streams)]
    frequent = np.unique(np.concatenate(ids), return_counts=True)
    rows = [int(i) for i in frequent[0][np.argsort(-frequent[1], kind="stable")][:args.token_rows]]
    bank = AdapterBank(served)
    names = [bank.add(f"a{i}", random_adapter(served, i + 1, args.rank, rows))
             for i in range(args.adapters)]
    plain_engine = Engine(base, tok, max_batch=args.streams)
    lora_engine = Engine(served, tok, max_batch=args.streams, adapters=bank)
    spread: list[Any] = [names[i % len(names)] for i in range(args.streams)]
    runs: dict[str, tuple[Engine, list[Any]]] = {"base": (plain_engine, [None] * args.streams),
                                                 "adapters": (lora_engine, spread)}
    rates: dict[str, list[float]] = {"base": [], "adapters": []}
    print(f"uptime before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"{args.streams} streams, {args.tokens} tokens each, {args.backend}; adapters: "
          f"{args.adapters} x rank {args.rank} on {len(names[0].tensors)} weights, "
          f"{len(rows)} token rows each\n")
    print("| round | base tokens/s | 4 adapters tokens/s | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for engine in (plain_engine, lora_engine):
        engine.start()
    try:
        for engine, adapters in runs.values():  # warm-up: buffers, caches
            wave(engine, ids, 8, adapters)
        for r in range(args.rounds):
            order = ("base", "adapters") if r % 2 == 0 else ("adapters", "base")
            for run in order:
                engine, adapters = runs[run]
                rates[run].append(wave(engine, ids, args.tokens, adapters))
            print(f"| {r + 1} | {rates['base'][-1]:.0f} | {rates['adapters'][-1]:.0f} | "
                  f"{rates['adapters'][-1] / rates['base'][-1]:.2f} |")
    finally:
        for engine in (plain_engine, lora_engine):
            engine.stop()
    plain_s, lora_s = step_times(base, served, bank, spread, args.steps)
    print(f"\none decode step of {args.streams} rows, median of {args.steps} alternating: base "
          f"{plain_s * 1e3:.2f} ms, {args.adapters} adapters {lora_s * 1e3:.2f} ms: "
          f"{args.streams / lora_s:.0f} vs {args.streams / plain_s:.0f} tokens/s, ratio "
          f"{plain_s / lora_s:.2f}")
    ratios = [a / b for a, b in zip(rates["adapters"], rates["base"], strict=True)]
    print(f"\nmedian: base {statistics.median(rates['base']):.0f} tokens/s, adapters "
          f"{statistics.median(rates['adapters']):.0f} tokens/s, ratio "
          f"{statistics.median(ratios):.2f} (target >= 0.80)")
    print(f"uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
