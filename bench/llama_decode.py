"""Grouped-query attention's KV cache and decode speed: a llama model vs the GPT-2 model of
(about) the same size.

    python bench/llama_decode.py [--backend cpp] [--threads 2] [--rounds 6]

For configs/medium-model.json (GPT-2, 8 heads) and configs/llama-medium-model.json (8 query
heads, 2 KV heads; parameters within 0.2%):
- the KV cache of 16 server slots: its bytes, and the RSS it adds to a fresh process
  (each measured in its own subprocess, the cache zero-filled so every page is touched);
- decode tokens/s, batch 1 (100 tokens after a 16-token prompt, KV cache) and a continuous-
  batching step of 16 sequences (decode_batch), timed in one process, alternating the two
  models every round so both see the same machine load. Reported: the best round (closest
  to an idle machine) and the median.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PAIR = {"gpt2": "medium-model", "llama": "llama-medium-model"}
SLOTS, PROMPT, NEW = 16, list(range(1, 17)), 100


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def cache_rss(name: str, backend: str) -> None:
    """Worker: print the bytes and the RSS growth of a 16-slot KV cache as JSON."""
    # the cache alone: a model's initialisation would leave freed memory for it to reuse
    import sllm
    from sllm.activations import KVCache
    cfg, be = sllm.ModelConfig.from_json(CONFIGS / f"{name}.json"), sllm.backends.get(backend)
    before = _rss_kb()
    cache = KVCache(be, cfg, SLOTS)
    after = _rss_kb()
    nbytes = sum(a.nbytes for a in cache.k + cache.v)
    print(json.dumps({"bytes": nbytes, "rss_kb": after - before}))


def timers(backend: str, threads: int) -> dict:
    """Per family: (one batch-1 generation, one 16-sequence decode_batch step)."""
    import sllm
    out = {}
    for family, name in PAIR.items():
        model = sllm.SLLM(CONFIGS / f"{name}.json", backend=backend).eval()
        model.backend.set_num_threads(threads)
        cache = model.new_cache(SLOTS)
        for s in range(SLOTS):  # each slot holds a 16-token prompt, as a busy server's
            model.decode(np.array([PROMPT]), cache.slot(s))
        step = (np.full(SLOTS, 5), cache, np.arange(SLOTS), np.full(SLOTS, len(PROMPT)))
        out[family] = (lambda m=model: m.generate(PROMPT, NEW, seed=0),
                       lambda m=model, a=step: m.decode_batch(*a))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cpp")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--rss", nargs=1, metavar="CONFIG")
    a = p.parse_args()
    if a.rss:
        cache_rss(a.rss[0], a.backend)
        return
    for family, name in PAIR.items():
        r = json.loads(subprocess.run([sys.executable, __file__, "--rss", name, "--backend",
                                       a.backend], capture_output=True, text=True,
                                      check=True).stdout)
        print(f"{family:6} {name:20} KV cache of {SLOTS} slots: {r['bytes'] / 2**20:.1f} MiB, "
              f"RSS +{r['rss_kb'] / 1024:.1f} MiB")
    runs = timers(a.backend, a.threads)
    times: dict[str, list[list[float]]] = {f: [[], []] for f in runs}
    for r in range(a.rounds):
        for family in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            for i, run in enumerate(runs[family]):
                t = time.perf_counter()
                run()
                times[family][i].append(time.perf_counter() - t)
    for family in runs:
        gen, batch = times[family]
        print(f"{family:6} decode batch 1: {NEW / min(gen):.0f} tok/s best "
              f"({NEW / np.median(gen):.0f} median); decode_batch of {SLOTS}: "
              f"{SLOTS / min(batch):.0f} tok/s best ({SLOTS / np.median(batch):.0f} median)")


if __name__ == "__main__":
    main()
