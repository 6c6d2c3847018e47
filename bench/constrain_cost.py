"""What constrained decoding costs on the small-model config (random weights, a BPE
vocabulary trained on the demo corpus):

1. per-token time of `generate()` with a JSON schema vs without, interleaved A/B rounds in
   one process (the grammar's masks warm after the first round, as on a server that has
   seen the schema once), and the first, cold compile of the grammar;
2. 16 concurrent requests through the continuous-batching engine (no HTTP): aggregate
   tokens/s with every request held to the schema vs none.

Both are also given per CPU-second of this process (time.process_time()), which a machine
shared with other work disturbs far less than wall time.

    .venv/bin/python bench/constrain_cost.py [--backend cpp] [--rounds 5] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np

import sllm
from sllm import backends, constrain
from sllm.batching import Engine, Request, Sampling
from sllm.corpus import generate_corpus
from sllm.generate import encode_prompt, generate
from sllm.tokenizer import BPETokenizer

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
    "city": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"},
                                         "maxItems": 4},
    "member": {"type": "boolean"}}, "required": ["name", "age", "city", "member"]}


def setup(backend: str) -> tuple[sllm.SLLM, BPETokenizer]:
    tok = BPETokenizer.train(generate_corpus(200_000, seed=1), 5000)
    cfg = sllm.ModelConfig.from_json("configs/small-model.json")
    cfg = sllm.ModelConfig(**{**cfg.__dict__, "vocab_size": tok.vocab_size, "dropout": 0.0})
    return sllm.SLLM(cfg, backend=backend, seed=1).eval(), tok


def per_token(model: sllm.SLLM, tok: BPETokenizer, ids: list[int], grammar: bool, seed: int,
              repeats: int = 3) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per generated token over `repeats` generations of up to 120 tokens."""
    kw: dict[str, Any] = {"json_schema": SCHEMA, "tokenizer": tok} if grammar else {}
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for r in range(repeats):
        out = generate(model, ids, 120, temperature=1.0, seed=seed * repeats + r,
                       eos_id=tok.eos_id, **kw)
        n += len(out) - len(ids)
    return (time.perf_counter() - t0) / max(n, 1), (time.process_time() - c0) / max(n, 1)


def engine_rate(engine: Engine, ids: list[int], grammar: Any, n: int = 16) -> tuple[float, float, int]:
    """(tokens per second, tokens per CPU-second, tokens) for n requests at once."""
    done = threading.Semaphore(0)
    counts = [0] * n

    def emit(i):
        def on(event):
            if event.kind == "done":
                counts[i] = event.completion_tokens
                done.release()
        return on
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        engine.submit(Request(ids, Sampling(max_tokens=120, seed=i, grammar=grammar), emit(i)))
    for _ in range(n):
        done.acquire()
    total = sum(counts)
    return total / (time.perf_counter() - t0), total / (time.process_time() - c0), total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default=backends.available()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    model, tok = setup(args.backend)
    ids = encode_prompt(tok, "the person:", warn=False)
    t0 = time.perf_counter()
    grammar = constrain.compile_for(tok, json_schema=SCHEMA)
    cold = time.perf_counter() - t0
    per_token(model, tok, ids, True, 0)  # warm the masks the schema needs
    free, held, free_cpu, held_cpu = [], [], [], []
    for r in range(args.rounds):  # interleaved: A B A B ...
        wall, cpu = per_token(model, tok, ids, False, r)
        free.append(wall)
        free_cpu.append(cpu)
        wall, cpu = per_token(model, tok, ids, True, r)
        held.append(wall)
        held_cpu.append(cpu)
    engine = Engine(model, tok, max_batch=16, max_queue=32)
    engine.start()
    try:
        engine_rate(engine, ids, grammar)  # warm-up
        rates: dict[str, list[float]] = {k: [] for k in ("free", "held", "free_cpu", "held_cpu")}
        tokens = {"free": 0, "held": 0}
        for _ in range(args.rounds):
            for kind, g in (("free", None), ("held", grammar)):
                rate, cpu_rate, n = engine_rate(engine, ids, g)
                rates[kind].append(rate)
                rates[kind + "_cpu"].append(cpu_rate)
                tokens[kind] += n
    finally:
        engine.stop()
    f, h = float(np.median(free)), float(np.median(held))
    fc, hc = float(np.median(free_cpu)), float(np.median(held_cpu))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    result = {"backend": model.backend.name, "vocab_size": tok.vocab_size,
              "grammar_compile_s": round(cold, 3),
              "decode_ms_per_token": round(f * 1e3, 3),
              "constrained_ms_per_token": round(h * 1e3, 3),
              "mask_cost_fraction": round((h - f) / f, 4),
              "mask_cost_fraction_cpu": round((hc - fc) / fc, 4),
              "engine16_tokens_per_s": round(med["free"], 1),
              "engine16_constrained_tokens_per_s": round(med["held"], 1),
              "engine16_ratio": round(med["held"] / med["free"], 4),
              "engine16_ratio_cpu": round(med["held_cpu"] / med["free_cpu"], 4),
              "engine16_tokens_per_request": round(tokens["free"] / (16 * args.rounds), 1),
              "engine16_constrained_tokens_per_request": round(
                  tokens["held"] / (16 * args.rounds), 1)}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
