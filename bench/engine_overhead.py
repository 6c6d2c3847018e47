"""The serving engine's own work per step, the model left out: sllm.batching.Engine over a
stand-in model whose forward returns stored rows of logits (small-model's vocabulary of
5,000), 16 greedy requests at once (16-token prompts, 64 tokens each) and one alone, as
bench/targets.py's engine rows run them. Prints microseconds a step beside the forward's.

    python bench/engine_overhead.py [--rounds 7] [--against REV] [--model small-model]
                                    [--logprobs K]

--against REV alternates, wave by wave in this process, with REV's batching, tokenizer,
sampler and detok modules (git show), and checks that both send the same text. --model
NAME runs a shipped config's model (cpp backend, f32, random weights) instead of the
stand-in, shared by both engines: the engine's time is then what is left of a step beside
the model's decode_batch and prefill (decode, prefill_batch) calls, and tokens/s are
printed too. --logprobs K asks every request for its tokens' log-probabilities and the K
likeliest alternatives.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import threading
import time
import types
from typing import Any

import numpy as np

import sllm
import sllm.batching
import sllm.tokenizer

V, PROMPT, TOKENS = 5000, 16, 64
DEPS = ("sampler", "detok", "tokenizer", "batching")  # each after what it imports


class StubCache:
    """Slots of nothing: the stand-in keeps no keys or values."""

    def slot(self, s: int) -> int:
        return s

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        pass

    def release(self) -> None:
        pass


class StubModel:
    """A forward that costs a row gather: the next logits are a stored row picked by the
    last token (so greedy answers vary), timed in `.seconds` to be taken out."""

    def __init__(self) -> None:
        self.config = types.SimpleNamespace(vocab_size=V)
        self.rows = np.random.default_rng(1).standard_normal((97, V)).astype(np.float32)
        self.seconds = 0.0

    def eval(self) -> StubModel:
        return self

    def new_cache(self, batch: int) -> StubCache:
        return StubCache()

    def decode(self, ids: Any, cache: Any) -> np.ndarray:
        return self.rows[[int(np.asarray(ids).reshape(-1)[-1]) % 97]]

    def decode_batch(self, tokens: Any, cache: Any, slots: Any, positions: Any,
                     copy: bool = True) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.rows[np.asarray(tokens) % 97]
        self.seconds += time.perf_counter() - t0
        return out

    def prefill_batch(self, prompts: list[list[int]], cache: Any, slots: Any) -> np.ndarray:
        return self.rows[[p[-1] % 97 for p in prompts]]


def modules_at(rev: str) -> tuple[Any, Any]:
    """REV's batching and tokenizer modules, importing REV's sampler and detok (the current
    ones where REV has none)."""
    for name in DEPS:
        try:
            code = subprocess.run(["git", "show", f"{rev}:sllm/{name}.py"], check=True,
                                  capture_output=True, text=True).stdout
        except subprocess.CalledProcessError:
            sys.modules[f"sllm._at_rev_{name}"] = sys.modules[f"sllm.{name}"]
            continue
        for dep in DEPS:
            code = code.replace(f"from .{dep} import", f"from ._at_rev_{dep} import")
        mod = types.ModuleType(f"sllm._at_rev_{name}")
        mod.__package__ = "sllm"
        sys.modules[mod.__name__] = mod
        exec(compile(code, f"{rev}:sllm/{name}.py", "exec"), mod.__dict__)
    return sys.modules["sllm._at_rev_batching"], sys.modules["sllm._at_rev_tokenizer"]


class Timed:
    """A real model whose decode_batch and prefill (decode, prefill_batch) calls are timed
    in `.seconds`."""

    def __init__(self, model: Any):
        self.model, self.config, self.seconds = model, model.config, 0.0

    def eval(self) -> Timed:
        return self

    def new_cache(self, batch: int) -> Any:
        return self.model.new_cache(batch)

    def decode(self, ids: Any, cache: Any) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.model.decode(ids, cache)
        self.seconds += time.perf_counter() - t0
        return out

    def decode_batch(self, tokens: Any, cache: Any, slots: Any, positions: Any,
                     copy: bool = True) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.model.decode_batch(tokens, cache, slots, positions, copy)
        self.seconds += time.perf_counter() - t0
        return out

    def prefill_batch(self, prompts: list[list[int]], cache: Any, slots: Any) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.model.prefill_batch(prompts, cache, slots)
        self.seconds += time.perf_counter() - t0
        return out


class Setup:
    """An engine (of the given modules) over a model, started."""

    def __init__(self, batching: Any, tokenizers: Any, model: Any, logprobs: int | None):
        self.batching, self.model, self.logprobs = batching, model, logprobs
        text = "".join(chr(0x4E00 + i) for i in range(V))  # one character per id
        tok = tokenizers.CharTokenizer.train(text, V)
        self.engine = batching.Engine(self.model, tok, max_batch=16, max_queue=32)
        self.engine.start()

    def wave(self, prompts: list[list[int]]) -> tuple[float, float, float, str]:
        """(engine microseconds a step, the model's microseconds a step, tokens/s, hash of
        the text)."""
        done = threading.Semaphore(0)
        texts: list[list[str]] = [[] for _ in prompts]

        def emit(event: Any, i: int) -> None:
            if event.kind == "text":
                texts[i].append(event.text)
            elif event.kind in ("done", "error"):
                done.release()
        steps, fwd = self.engine.stats.steps, self.model.seconds
        t0 = time.perf_counter()
        for i, ids in enumerate(prompts):
            sampling = self.batching.Sampling(max_tokens=TOKENS, temperature=0,
                                              logprobs=self.logprobs)
            self.engine.submit(self.batching.Request(ids, sampling,
                                                     lambda e, i=i: emit(e, i)))
        for _ in prompts:
            done.acquire()
        took, fwd = time.perf_counter() - t0, self.model.seconds - fwd
        steps = self.engine.stats.steps - steps
        digest = hashlib.sha1(repr(texts).encode()).hexdigest()[:12]
        return ((took - fwd) / steps * 1e6, fwd / steps * 1e6, len(prompts) * TOKENS / took,
                digest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--against", default=None, help="a git revision to alternate with")
    ap.add_argument("--model", default=None, help="a shipped config's name (cpp backend)")
    ap.add_argument("--logprobs", type=int, default=None, help="log-probabilities, K likeliest")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, V, PROMPT).tolist() for _ in range(16)]
    model: Any = StubModel()
    if args.model:
        model = Timed(sllm.SLLM(args.model, backend="cpp", seed=0).eval())
        if model.config.vocab_size != V:
            raise SystemExit(f"--model needs a vocabulary of {V}, {args.model} has "
                             f"{model.config.vocab_size}")
    setups = {"now": Setup(sllm.batching, sllm.tokenizer, model, args.logprobs)}
    if args.against:
        setups[args.against] = Setup(*modules_at(args.against), model, args.logprobs)
    times: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    digests: dict[int, set[str]] = {1: set(), 16: set()}
    try:
        for r in range(args.rounds + 1):  # round 0 warms up
            for name in (list(setups) if r % 2 else list(setups)[::-1]):
                for n in (16, 1):
                    us, fwd, rate, digest = setups[name].wave(prompts[:n])
                    digests[n].add(digest)
                    if r:
                        times.setdefault((name, n), []).append((us, fwd, rate))
    finally:
        for s in setups.values():
            s.engine.stop()
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.rounds} waves")
    what = "model (decode_batch + prefill)" if args.model else "stand-in forward"
    for (name, n), got in sorted(times.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        us, fwd, rate = np.median(np.array(got), axis=0)
        print(f"{name:>12} {n:>2} rows: engine {us:6.0f} us a step ({us / n:5.1f} a row), "
              f"{what} {fwd:5.0f} us, {rate:7,.0f} tok/s")
    print("same text:", all(len(d) == 1 for d in digests.values()))


if __name__ == "__main__":
    main()
