"""Side by side in one run: the demo-model shape in headless Chromium (sllm.js) and in
Python's wasm-simd backend, on the same kernels. Prints generation tokens/s, first-token
latency, training-step time, the ratios, and the machine load while it ran.

    .venv/bin/python bench/web_speed.py [--rounds 8]

The model is configs/small-model.json with the demo's context (128) and a 2000-word
vocabulary trained on the built-in corpus (what `make demo` trains: the corpus holds
1379 distinct words, so the vocabulary has 1379 entries); its weights are a
fresh initialisation, which costs the same to run as trained ones.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import sllm  # noqa: E402 - after the sys.path insert
from sllm import tokenizer as tokenizers  # noqa: E402 - after the sys.path insert
from sllm.corpus import generate_corpus  # noqa: E402 - after the sys.path insert
from sllm.export_web import export_site  # noqa: E402 - after the sys.path insert
from sllm.generate import encode_prompt, stream  # noqa: E402 - after the sys.path insert
from sllm.optim import AdamW  # noqa: E402 - after the sys.path insert

PROMPT = "A: Hello! How are you today? Do you want to play with me in the park?\nB:"
NEW_TOKENS, B, T = 100, 8, 64


def demo_model(folder: Path) -> Path:
    """The demo shape with a trained 2000-word tokenizer, saved as f32."""
    with warnings.catch_warnings():  # the corpus has fewer words than 2000, as in make demo
        warnings.simplefilter("ignore")
        tok = tokenizers.WordTokenizer.train(generate_corpus(3_000_000), 2000)
    cfg = {**json.loads((ROOT / "configs" / "small-model.json").read_text()),
           "maxSeqLen": 128, "dropout": 0.0, "vocabSize": tok.vocab_size}
    model = sllm.SLLM(cfg, backend="numpy", seed=0)
    model.tokenizer = tok.to_dict()
    model.save(folder / "demo.sllm")
    return folder / "demo.sllm"


class PythonSide:
    """The model on Python's wasm-simd backend: one generation or one training step per call."""

    def __init__(self, path: Path):
        self.m = sllm.load(path, backend="wasm-simd")
        tok = tokenizers.from_dict(self.m.tokenizer)
        self.ids = encode_prompt(tok, PROMPT, warn=False)
        self.opt = AdamW(self.m, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1) \
            if self.m.qtype is None else None
        self.module = self.m.backend.capabilities["module"]

    def generate(self) -> dict:
        """Seconds for NEW_TOKENS greedy tokens, and to the first one."""
        self.m.eval()
        start, first = time.perf_counter(), None
        for _ in stream(self.m, self.ids, NEW_TOKENS, temperature=0):
            first = first if first is not None else time.perf_counter() - start
        return {"gen_s": time.perf_counter() - start, "first_s": first}

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """Seconds for forward, backward, clipping and AdamW on one batch."""
        assert self.opt is not None, "a quantized model does not train"
        self.m.train()
        start = time.perf_counter()
        self.m.forward_backward(x, y)
        self.opt.clip_grad_norm(1.0)
        self.opt.step()
        return time.perf_counter() - start


BROWSER_LOAD = """
window.bench = await sllm.load("model.sllm");
window.benchIds = window.bench.encodePrompt(args[0]);
return window.bench.wasm;
"""
BROWSER_GENERATE = """
const m = window.bench;
let first = null;
const t0 = performance.now();
for (const _ of m.tokens(window.benchIds, {maxTokens: args[0], temperature: 0})) {
  if (first === null) first = performance.now() - t0;
}
return {gen_s: (performance.now() - t0) / 1000, first_s: first / 1000};
"""
BROWSER_STEP = """
const s = performance.now();
window.bench.trainStep(args[0].flat(), args[1].flat(), args[0].length, args[0][0].length, {lr: 1e-3});
return (performance.now() - s) / 1000;
"""


def main() -> None:
    """Export the demo-shaped model, then time both sides alternately, call by call."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--dtype", default="f32", help="the site's model: f32, f16, q8_0, q4_0 or "
                   "q4_1 (quantized models run generation only; both sides load the same file)")
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
        path = folder / f"site-{args.dtype}" / "model.sllm"
        if not path.exists():
            export_site(folder / "demo.sllm", path.parent, dtype=args.dtype)
        py = PythonSide(path)
        train = py.m.qtype is None
        tok = tokenizers.from_dict(py.m.tokenizer)
        ids = np.array(tok.encode(generate_corpus(50_000, seed=4)))
        rng = np.random.default_rng(0)
        server = StaticServer(path.parent)
        driver = chromium()
        load_before = os.getloadavg()
        rows: dict = {"python": {"gen": [], "step": []}, "chromium": {"gen": [], "step": []}}
        try:
            driver.get(server.url + "index.html")
            modules = {"python": py.module, "chromium": run_js(driver, BROWSER_LOAD, PROMPT)}
            for r in range(args.rounds + 1):  # round 0 warms both up and is not counted
                offs = rng.integers(0, len(ids) - T - 1, B)
                x = np.stack([ids[o:o + T] for o in offs])
                y = np.stack([ids[o + 1:o + T + 1] for o in offs])
                sample = {"python": (py.generate(), py.step(x, y) if train else None),
                          "chromium": (run_js(driver, BROWSER_GENERATE, NEW_TOKENS),
                                       run_js(driver, BROWSER_STEP, x.tolist(), y.tolist())
                                       if train else None)}
                for side, (gen, step) in sample.items():
                    if r:
                        rows[side]["gen"].append(gen)
                        rows[side]["step"].append(step)
        finally:
            driver.quit()
            server.close()
        load_after = os.getloadavg()
    report(rows, modules, sizes, load_before, load_after, py.m.config.vocab_size, args.dtype)


def report(rows: dict, modules: dict, sizes: dict, before: tuple, after: tuple,
           vocab: int, dtype: str) -> None:
    """Fastest call per side (the machine is shared; the minimum is what load disturbs
    least), the median beside it, and the ratios."""
    print(f"demo model shape (C=128, 4 layers, F=512, V={vocab} words, T<=128), {dtype}; "
          f"train step B={B} T={T}; {NEW_TOKENS} greedy tokens; {len(rows['python']['gen'])} "
          f"alternating rounds")
    print(f"{'side':<10}{'module':<20}{'gen tok/s best/median':>24}{'1st token ms':>14}"
          f"{'step ms best/median':>22}")
    best = {}
    for side, r in rows.items():
        gen = sorted(g["gen_s"] for g in r["gen"])
        steps = sorted(s for s in r["step"] if s is not None) or [float("nan")]
        first = min(g["first_s"] for g in r["gen"])
        best[side] = (NEW_TOKENS / gen[0], steps[0])
        print(f"{side:<10}{modules[side]:<20}{NEW_TOKENS / gen[0]:>13.0f} / "
              f"{NEW_TOKENS / gen[len(gen) // 2]:<8.0f}{first * 1000:>14.1f}"
              f"{steps[0] * 1000:>11.1f} / {steps[len(steps) // 2] * 1000:<8.1f}")
    c, p = best["chromium"], best["python"]
    print(f"chromium / python (best): generation {c[0] / p[0]:.2f}x, train step "
          f"{p[1] / c[1]:.2f}x (above 1: faster in the browser)")
    print("exported site: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
    print(f"load average (1 min) before {before[0]:.2f}, after {after[0]:.2f} on "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    main()
