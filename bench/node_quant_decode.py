"""Batch-1 decode in Node (the browser's sllm.js on the same WebAssembly modules) in
float32 and each quantized type, alternating in one Node process, as bench/quant_decode.py
does for Python's backends: per type the median tokens/s and the median of the per-round
ratios to float32 (> 1: the quantized model is faster).

    python bench/node_quant_decode.py [--config small-model] [--wasm simd128|relaxed|scalar]
                                      [--rounds 15] [--tokens 64]

The model files are written by sllm (seed 0, a character tokenizer of the built-in
corpus), the float32 one and its quantized copies.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import sllm
from sllm.bench import QUANT_TYPES
from sllm.corpus import generate_corpus
from sllm.tokenizer import CharTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from node_js import run_node, why_no_node  # noqa: E402

TIMING = """
const names = Object.keys(args[0]), models = {};
for (const n of names) models[n] = await web.loadModel(args[0][n], args[1]);
const ids = Array.from({length: 16}, (_, i) => i + 1);
const once = (m) => {
  const t0 = performance.now();
  let count = 0;
  for (const _ of m.tokens(ids, {maxTokens: args[2], temperature: 0})) count++;
  return (performance.now() - t0) / 1000;
};
for (const n of names) once(models[n]);
const times = Object.fromEntries(names.map((n) => [n, []]));
for (let r = 0; r < args[3]; r++) {
  const order = names.slice(r % names.length).concat(names.slice(0, r % names.length));
  for (const n of order) times[n].push(once(models[n]));
}
return {wasm: models[names[0]].wasm, times};
"""


def write_models(config: str, out: Path) -> dict[str, str]:
    """float32 and each quantized type of one model (seed 0), with a tokenizer inside."""
    text = generate_corpus(20_000, seed=0)
    paths = {}
    for qtype in ("f32",) + QUANT_TYPES:
        model = sllm.SLLM(config, backend="numpy", seed=0)
        tok = CharTokenizer.train(text, min(model.config.vocab_size, len(set(text)) + 1),
                                  byte_fallback=False)
        if qtype != "f32":
            model.quantize(qtype)
        model.tokenizer = tok.to_dict()
        paths[qtype] = str(out / f"{qtype}.sllm")
        model.save(paths[qtype])
    return paths


def median(values: list[float]) -> float:
    s = sorted(values)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small-model")
    parser.add_argument("--wasm", default="simd128")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    if why_no_node():
        raise SystemExit(why_no_node())
    with tempfile.TemporaryDirectory(prefix="sllm-node-bench-") as tmp:
        paths = write_models(args.config, Path(tmp))
        got = run_node(TIMING, paths, args.wasm, args.tokens, args.rounds, timeout=1800)
    times = got["times"]
    print(f"node, {got['wasm']} module, {args.config}, {args.tokens} tokens after a 16-token "
          f"prompt, {args.rounds} alternating rounds; load {os.getloadavg()[0]:.1f}")
    print(f"{'type':6s}{'tok/s (median)':>16s}{'vs f32 (median of rounds)':>28s}{'rounds faster':>15s}")
    for name, t in times.items():
        ratios = [f / q for f, q in zip(times["f32"], t, strict=True)]
        print(f"{name:6s}{args.tokens / median(t):16,.0f}{median(ratios):27.2f}x"
              f"{sum(r > 1 for r in ratios):>9d}/{len(t)}")


if __name__ == "__main__":
    main()
