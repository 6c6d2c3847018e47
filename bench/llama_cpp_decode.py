"""Greedy batch-1 decode tokens/s of a GGUF file in llama.cpp (llama-cpp-python): the
llama.cpp column of bench/targets.py, run in whichever interpreter has llama_cpp (often a
separate .venv-interop), so it imports nothing of sllm.

    python bench/llama_cpp_decode.py MODEL.gguf [--tokens 64] [--threads 2] [--repeats 3]

Prints one JSON object: {"tokens_per_s": median over repeats, "runs": [...]}. Each run
evaluates a 16-token prompt, then decodes `tokens` tokens one at a time taking the argmax
of the last logits (as sllm's generate suite does).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    import llama_cpp
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n_ctx = 16 + args.tokens + 1
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=n_ctx, n_batch=n_ctx, verbose=False,
                          n_threads=args.threads, n_threads_batch=args.threads, logits_all=False)
    prompt = list(range(1, 17))
    runs = []
    for _ in range(args.repeats + 1):  # the first run warms caches, not counted
        llm.reset()
        llm.eval(prompt)
        t0 = time.perf_counter()
        for _ in range(args.tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([token])
        runs.append(args.tokens / (time.perf_counter() - t0))
    print(json.dumps({"tokens_per_s": float(np.median(runs[1:])), "runs": runs[1:]}))


if __name__ == "__main__":
    main()
