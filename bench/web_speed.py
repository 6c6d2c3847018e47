"""Side by side in one run: the demo-model shape in headless Chromium (sllm.js) and in
Python's wasm-simd backend, on the same kernels. Prints generation tokens/s, first-token
latency, training-step time, the ratios, and the machine load while it ran.

    .venv/bin/python bench/web_speed.py [--rounds 3]

The model is configs/small-model.json with the demo's context (128) and a 2000-word
vocabulary trained on the built-in corpus (what `make demo` trains); its weights are a
fresh initialisation, which costs the same to run as trained ones.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import sllm  # noqa: E402
from sllm import tokenizer as tokenizers  # noqa: E402
from sllm.corpus import generate_corpus  # noqa: E402
from sllm.export_web import export_site  # noqa: E402
from sllm.generate import encode_prompt, stream  # noqa: E402
from sllm.optim import AdamW  # noqa: E402

PROMPT = "A: Hello! How are you today? Do you want to play with me in the park?\nB:"
NEW_TOKENS, B, T = 100, 8, 64


def demo_model(folder: Path) -> Path:
    """The demo shape with a trained 2000-word tokenizer, saved as f32."""
    cfg = {**json.loads((ROOT / "configs" / "small-model.json").read_text()),
           "maxSeqLen": 128, "dropout": 0.0, "vocabSize": 2000}
    tok = tokenizers.WordTokenizer.train(generate_corpus(3_000_000), 2000)
    model = sllm.SLLM(cfg, backend="numpy", seed=0)
    model.tokenizer = tok.to_dict()
    model.save(folder / "demo.sllm")
    return folder / "demo.sllm"


def python_side(path: Path, batches: list) -> dict:
    """Generation and training-step timings on the wasm-simd backend."""
    m = sllm.load(path, backend="wasm-simd")
    tok = tokenizers.from_dict(m.tokenizer)
    ids = encode_prompt(tok, PROMPT, warn=False)
    m.generate(ids, 4, temperature=0)  # warm-up
    start = time.perf_counter()
    first = None
    for _ in stream(m, ids, NEW_TOKENS, temperature=0):
        if first is None:
            first = time.perf_counter() - start
    gen = time.perf_counter() - start
    opt = AdamW(m, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    m.train()
    times = []
    for x, y in batches:
        t0 = time.perf_counter()
        m.forward_backward(x, y)
        opt.clip_grad_norm(1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"module": m.backend.capabilities["module"], "tokens_per_s": NEW_TOKENS / gen,
            "first_token_ms": first * 1000, "step_ms": 1000 * min(times[1:])}


BROWSER_JS = """
const m = await sllm.load("model.sllm");
const ids = m.encodePrompt(args[0]);
[...m.tokens(ids, {maxTokens: 4, temperature: 0})];  // warm-up
let first = null;
const t0 = performance.now();
for (const _ of m.tokens(ids, {maxTokens: args[1], temperature: 0})) {
  if (first === null) first = performance.now() - t0;
}
const gen = (performance.now() - t0) / 1000;
const times = [];
for (const [x, y] of args[2]) {
  const s = performance.now();
  m.trainStep(x.flat(), y.flat(), x.length, x[0].length, {lr: 1e-3});
  times.push(performance.now() - s);
}
times.shift();
return {module: m.wasm, tokens_per_s: args[1] / gen, first_token_ms: first, step_ms: Math.min(...times)};
"""


def main() -> None:
    """Export the demo-shaped model, then time both sides alternately."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    from browser import StaticServer, chromium, run_js, why_no_browser
    reason = why_no_browser()
    if reason:
        sys.exit(f"no browser: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = demo_model(folder)
        sizes = {dt: export_site(path, folder / f"site-{dt}", dtype=dt)["total_bytes"]
                 for dt in ("f32", "f16", "q8_0", "q4_0")}
        tok = tokenizers.from_dict(sllm.load(path, backend="numpy").tokenizer)
        ids = np.array(tok.encode(generate_corpus(50_000, seed=4)))
        rng = np.random.default_rng(0)
        batches = []
        for _ in range(8):
            offs = rng.integers(0, len(ids) - T - 1, B)
            batches.append((np.stack([ids[o:o + T] for o in offs]),
                            np.stack([ids[o + 1:o + T + 1] for o in offs])))
        server = StaticServer(folder / "site-f32")
        driver = chromium()
        load_before = os.getloadavg()
        rows = {"python": [], "chromium": []}
        try:
            driver.get(server.url + "index.html")
            for _ in range(args.rounds):
                rows["python"].append(python_side(path, batches))
                rows["chromium"].append(run_js(driver, BROWSER_JS, PROMPT, NEW_TOKENS,
                                               [[x.tolist(), y.tolist()] for x, y in batches]))
        finally:
            driver.quit()
            server.close()
        load_after = os.getloadavg()
    report(rows, sizes, load_before, load_after, tok.vocab_size)


def report(rows: dict, sizes: dict, before: tuple, after: tuple, vocab: int) -> None:
    """Best of the rounds per side (the fastest step of each: the machine is shared, and
    the minimum is what load disturbs least), and the ratios."""
    best = {side: {"module": r[0]["module"],
                   "tokens_per_s": max(x["tokens_per_s"] for x in r),
                   "first_token_ms": min(x["first_token_ms"] for x in r),
                   "step_ms": min(x["step_ms"] for x in r)} for side, r in rows.items()}
    print(f"demo model shape (C=128, 4 layers, F=512, V={vocab} words, T<=128); "
          f"train step B={B} T={T}; {NEW_TOKENS} greedy tokens")
    print(f"{'side':<10}{'module':<20}{'gen tok/s':>10}{'1st token ms':>14}{'step ms':>10}")
    for side, b in best.items():
        print(f"{side:<10}{b['module']:<20}{b['tokens_per_s']:>10.0f}{b['first_token_ms']:>14.1f}"
              f"{b['step_ms']:>10.1f}")
    c, p = best["chromium"], best["python"]
    print(f"chromium / python: generation {c['tokens_per_s'] / p['tokens_per_s']:.2f}x, "
          f"train step {p['step_ms'] / c['step_ms']:.2f}x (higher is faster in the browser)")
    print("exported site: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
    print(f"load average (1 min) before {before[0]:.2f}, after {after[0]:.2f} on "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    main()
