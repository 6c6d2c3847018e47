"""LoRA against full fine-tuning in headless Chromium (sllm.js, lora.js) on the demo model's
shape: training-step time (interleaved, step by step), the WebAssembly memory each holds
after training, and the adapter file against the model file.

    .venv/bin/python bench/web_lora.py [--rounds 8] [--rank 8]

Three models live in one page, each in its own WebAssembly instance: the f32 model trained
in full, the f32 model with a LoRA adapter (rank 8 on every attention and MLP weight), and
its q8_0 export with the same adapter (QLoRA: the gradient runs through matmul_q_bwd). Each
round runs one AdamW step of each on the same batch (B=8, T=64), alternating.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from web_speed import ROOT, B, T, demo_model

from sllm import tokenizer as tokenizers
from sllm.corpus import generate_corpus
from sllm.export_web import export_site
from sllm.serialize import read_model_file

sys.path.insert(0, str(ROOT / "tests"))  # tests/browser.py: the server and Chromium

SETUPS = {"full f32": ("model.sllm", None), "LoRA f32": ("model.sllm", "lora"),
          "LoRA q8_0": ("q8_0.sllm", "lora")}
LOAD = """
window.runs = window.runs || {};
const m = await sllm.load(args[0]);
if (args[1]) m.createAdapter({rank: args[2]});
window.runs[args[3]] = m;
return m.wasm;
"""
STEP = """
const s = performance.now();
window.runs[args[2]].trainStep(args[0].flat(), args[1].flat(), args[0].length, args[0][0].length, {lr: 1e-3});
return (performance.now() - s) / 1000;
"""
AFTER = """
const m = window.runs[args[0]];
return {heap: m.kernels.heap.memory.buffer.byteLength, adapter: m.adapter ? m.saveAdapter().length : null,
        adapter32: m.adapter ? m.saveAdapter({dtype: "f32"}).length : null,
        trainable: m.adapter ? m.adapter.parameters : m.numParameters()};
"""


def main() -> None:
    """Export the demo-shaped model (f32 and q8_0), then time the three setups alternately."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    args = p.parse_args()
    from browser import StaticServer, chromium, run_js, why_no_browser
    reason = why_no_browser()
    if reason:
        sys.exit(f"no browser: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = demo_model(folder)
        export_site(path, folder / "site")
        export_site(path, folder / "q", dtype="q8_0")
        (folder / "site" / "q8_0.sllm").write_bytes((folder / "q" / "model.sllm").read_bytes())
        model_bytes = (folder / "site" / "model.sllm").stat().st_size
        tok = tokenizers.from_dict(read_model_file(path).tokenizer)
        ids = np.array(tok.encode(generate_corpus(50_000, seed=4)))
        rng = np.random.default_rng(0)
        server, driver = StaticServer(folder / "site"), chromium()
        load_before = os.getloadavg()
        times: dict[str, list[float]] = {name: [] for name in SETUPS}
        try:
            driver.get(server.url + "index.html")
            modules = {name: run_js(driver, LOAD, file, lora, args.rank, name)
                       for name, (file, lora) in SETUPS.items()}
            for r in range(args.rounds + 1):  # round 0 warms up and is not counted
                offs = rng.integers(0, len(ids) - T - 1, B)
                x = np.stack([ids[o:o + T] for o in offs]).tolist()
                y = np.stack([ids[o + 1:o + T + 1] for o in offs]).tolist()
                for name in SETUPS:
                    seconds = run_js(driver, STEP, x, y, name)
                    if r:
                        times[name].append(seconds)
            after = {name: run_js(driver, AFTER, name) for name in SETUPS}
        finally:
            driver.quit()
            server.close()
        load_after = os.getloadavg()
    print(f"demo model shape (C=128, 4 layers, F=512, V={tok.vocab_size}), step B={B} T={T}, "
          f"LoRA rank {args.rank} on every attention and MLP weight; {args.rounds} interleaved rounds")
    print(f"{'setup':<12}{'module':<10}{'trainable':>11}{'step ms best/median':>22}{'wasm memory MB':>16}")
    for name, t in times.items():
        t.sort()
        a = after[name]
        print(f"{name:<12}{modules[name]:<10}{a['trainable']:>11,}{t[0] * 1000:>11.1f} / "
              f"{t[len(t) // 2] * 1000:<8.1f}{a['heap'] / 2**20:>15.1f}")
    adapter, adapter32 = after["LoRA f32"]["adapter"], after["LoRA f32"]["adapter32"]
    print(f"adapter file {adapter:,} bytes (f16, as the page saves it; {adapter32:,} in f32) = "
          f"{100 * adapter / model_bytes:.1f}% of the f32 model file ({model_bytes:,} bytes)")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    main()
