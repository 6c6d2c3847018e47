"""The speed issue's table (issue 26), measured side by side in one run, as markdown.

    python bench/targets.py [--configs seed-baseline,small-model,medium-model]
                            [--repeats 3] [--threads 2] [--out targets.md]

Rows, each a ratio of things measured in the same run (the 2-core machines are shared, so
absolute figures move with the load; the load average is printed with the table):
- training step (forward, backward, clip, AdamW) of each config on cpp, against numpy
  and, where torch imports, against plain PyTorch (`sllm bench --suite train --vs torch`);
- batch-1 decode on cpp, float32 and each quantized type: tokens/s, the share of the
  measured streaming-read bandwidth, the ratio to float32 (`sllm bench --suite generate`);
- the batching engine alone (no HTTP) with 16 sequences at once against one at a time,
  in alternating rounds, and the time to the first token of a 64-token prompt;
- llama.cpp (llama-cpp-python) decoding the same model exported as GGUF, greedy, batch 1,
  on as many threads, per type, against sllm's rate above (bench/llama_cpp_decode.py, run
  by --llama-python: an interpreter that imports llama_cpp, e.g. a .venv-interop; the
  rows are left out when there is none).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import sllm
from sllm.bench_report import run_bench
from sllm.config import ModelConfig

ROOT = Path(__file__).resolve().parent.parent


def row(*cells: str) -> str:
    """A markdown table row of the five columns of HEADER."""
    return "| " + " | ".join(cells) + " |"


HEADER = ["| what | rate | MFU or share of bandwidth | ratio | compared with |",
          "| --- | ---: | ---: | ---: | --- |"]


def train_rows(config: dict[str, Any], repeats: int, threads: int,
               torch_python: str | None = None, rounds: int = 1) -> list[str]:
    """cpp's training step: time, tokens/s, MFU, vs numpy and vs torch. With torch_python,
    torch runs in that interpreter, alternating with sllm's runs for `rounds` rounds; the
    torch ratio is the median of each round's side-by-side ratio."""
    pairs: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    for _ in range(rounds if torch_python else 1):
        report = run_bench(["cpp", "numpy"], ["train"], config, 16, 128, threads, repeats,
                           vs_torch=torch_python is None and report_torch())
        cpp = next(r for res in report["results"] if res["backend"] == "cpp"
                   for r in res.get("rows", []) if r["suite"] == "train")
        pairs.append((cpp, torch_train(torch_python, config, repeats, threads)
                      if torch_python else None))
    cpp = sorted((c for c, _ in pairs), key=lambda r: r["median_s"])[len(pairs) // 2]
    mfu = f"{cpp['mfu']:.0%}" if cpp.get("mfu") else ""
    rate = f"{cpp['median_s'] * 1e3:.1f} ms, {cpp['tokens_per_s']:,.0f} tok/s"
    rows = [row(f"train {cpp['name']}", rate, mfu, f"{cpp['vs_numpy']:.2f}x", "numpy")]
    if torch_python:
        ratios = sorted(t["median_s"] / c["median_s"] for c, t in pairs if t)
        rows.append(row(f"train {cpp['name']}", rate, mfu, f"{ratios[len(ratios) // 2]:.2f}x",
                        f"torch ({len(ratios)} alternated rounds)"))
    elif cpp.get("vs_torch"):
        rows.append(row(f"train {cpp['name']}", rate, mfu, f"{cpp['vs_torch']:.2f}x", "torch"))
    return rows


def torch_train(python: str, config: dict[str, Any], repeats: int,
                threads: int) -> dict[str, Any]:
    """torch's train row from bench/torch_ref.py run by interpreter `python` (one with torch,
    e.g. a separate venv), importing this checkout's sllm."""
    from sllm.bench import Job
    job = Job("torch", ["train"], config, 16, 128, threads, repeats)
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([python, "-m", "sllm.bench", json.dumps(job.__dict__)], env=env,
                          capture_output=True, text=True, cwd=root)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"--torch-python {python}: torch run failed: {tail[0]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return next(r for r in result["rows"] if r["suite"] == "train")


def report_torch() -> bool:
    from sllm.bench import torch_reference
    return torch_reference() is not None


def decode_rates(config: dict[str, Any], repeats: int, threads: int) -> dict[str, dict[str, Any]]:
    """Batch-1 decode per type (`sllm bench --suite generate`): its row by type."""
    report = run_bench(["cpp"], ["generate"], config, 1, 64, threads, repeats, vs_torch=False)
    return {r["name"].rsplit(", ", 1)[1] if "f32_row" in r else "f32": r
            for r in report["results"][0].get("rows", [])} | {"": report}


def decode_rows(rates: dict[str, dict[str, Any]]) -> list[str]:
    """Batch-1 decode per type: tokens/s, share of bandwidth, vs float32."""
    out = []
    for qtype, r in rates.items():
        if not qtype:
            continue
        bw = f"{r['bw']:.0%}" if r.get("bw") else ""
        vs = f"{r['vs_f32']:.2f}x" if r.get("vs_f32") else "1.00x"
        out.append(row(f"decode batch 1, {qtype}", f"{r['tokens_per_s']:,.0f} tok/s", bw, vs,
                       "f32 decode"))
    report = rates[""]
    gbps = report.get("bandwidth_gbps")
    if gbps:
        out.append(row("streaming read (the bandwidth above)", f"{gbps:.1f} GB/s", "", "", ""))
    return out


def llama_python(given: str | None) -> str | None:
    """The interpreter that runs llama.cpp: --llama-python, else this one when it imports
    llama_cpp, else none."""
    if given:
        return given
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def llama_cpp_rows(cfg: ModelConfig, rates: dict[str, dict[str, Any]], python: str,
                   threads: int, repeats: int) -> list[str]:
    """llama.cpp's greedy batch-1 decode of the same model (seed 0, as `sllm bench`
    makes it) exported as GGUF, per type, against sllm's rate in `rates`."""
    from sllm.gguf_file import export_gguf
    from sllm.tokenizer import CharTokenizer
    model = sllm.SLLM(cfg, backend="numpy", seed=0).eval()
    model.tokenizer = CharTokenizer.train(  # any vocabulary of the model's size will do
        "".join(chr(0x4E00 + i) for i in range(cfg.vocab_size)), cfg.vocab_size).to_dict()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in [q for q in rates if q]:
            path = Path(tmp) / f"{qtype}.gguf"
            export_gguf(model, path, qtype=qtype)
            run = subprocess.run([python, str(ROOT / "bench" / "llama_cpp_decode.py"), str(path),
                                  "--threads", str(threads), "--repeats", str(repeats)],
                                 capture_output=True, text=True, check=True)
            theirs = json.loads(run.stdout)["tokens_per_s"]
            ours = rates[qtype]["tokens_per_s"]
            out.append(row(f"llama.cpp decode batch 1, {qtype}", f"{theirs:,.0f} tok/s", "",
                           f"{ours / theirs:.2f}x", f"sllm {ours:,.0f} tok/s / llama.cpp"))
    return out


def engine_rows(cfg: ModelConfig, qtype: str, rounds: int, tokens: int) -> list[str]:
    """The batching engine alone: 16 requests at once vs one at a time (alternating
    rounds), and the first token of a 64-token prompt."""
    from sllm.batching import Engine, Request, Sampling
    from sllm.tokenizer import CharTokenizer
    model = sllm.SLLM(cfg, backend="cpp", seed=0).eval()
    if qtype != "f32":
        model.quantize(qtype)
    # one character per id (CJK ideographs): any model's ids decode, as the engine needs
    tok = CharTokenizer.train("".join(chr(0x4E00 + i) for i in range(cfg.vocab_size)),
                              cfg.vocab_size)
    engine = Engine(model, tok, max_batch=16, max_queue=32)
    engine.start()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, tok.vocab_size, 16).tolist() for _ in range(16)]

    def wave(n: int) -> float:
        done, count, errors = threading.Semaphore(0), [0], []

        def emit(event: Any) -> None:
            if event.kind in ("done", "error"):
                count[0] += event.completion_tokens
                if event.kind == "error":
                    errors.append(event.text or event.note)
                done.release()
        t0 = time.perf_counter()
        for i in range(n):
            engine.submit(Request(prompts[i], Sampling(max_tokens=tokens, temperature=0), emit))
        for _ in range(n):
            done.acquire()
        if errors:
            raise RuntimeError(f"the engine failed a request: {errors[0]}")
        return count[0] / (time.perf_counter() - t0)

    def first_token() -> float:
        got = threading.Event()
        t0 = time.perf_counter()
        prompt = rng.integers(0, tok.vocab_size, min(64, cfg.max_seq_len - 2)).tolist()
        engine.submit(Request(prompt, Sampling(max_tokens=1, temperature=0),
                              lambda e: got.set() if e.kind in ("text", "done", "error") else None))
        got.wait()
        return time.perf_counter() - t0

    try:
        wave(1), wave(16)  # warm-up: caches, activations, thread pool
        one, many = [], []
        for _ in range(rounds):
            one.append(wave(1))
            many.append(wave(16))
        ttft = [first_token() for _ in range(5)]
    finally:
        engine.stop()
    a, b = float(np.median(one)), float(np.median(many))
    return [row(f"engine alone, {qtype}, 16 sequences at once", f"{b:,.0f} tok/s", "",
                f"{b / a:.2f}x", f"one at a time: {a:,.0f} tok/s"),
            row(f"engine alone, {qtype}, first token of a 64-token prompt",
                f"{np.median(ttft) * 1e3:.1f} ms", "", "", "median of 5")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="seed-baseline,small-model,medium-model")
    ap.add_argument("--engine-configs", default="small-model,medium-model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--torch-python", default=None,
                    help="an interpreter with torch (e.g. another venv's python): time torch's "
                         "train step there, alternated with sllm's runs for --rounds rounds")
    ap.add_argument("--llama-python", default=None,
                    help="an interpreter that imports llama_cpp (default: this one if it does)")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out: "
                    "train, engine, llama.cpp")
    args = ap.parse_args()
    skip, python = set(args.skip.split(",")), llama_python(args.llama_python)
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.threads} "
             f"kernel threads, load average {os.getloadavg()[0]:.1f} at the start."]
    for name in args.configs.split(","):
        config = ModelConfig.from_json(ROOT / "configs" / f"{name}.json").to_dict()
        lines += ["", f"### {name}", "", *HEADER]
        if "train" not in skip:
            lines += train_rows(config, args.repeats, args.threads, args.torch_python,
                                args.rounds)
        rates = decode_rates(config, args.repeats, args.threads)
        lines += decode_rows(rates)
        if python is not None and "llama.cpp" not in skip:
            lines += llama_cpp_rows(ModelConfig.from_dict(config), rates, python, args.threads,
                                    args.repeats)
        if name in args.engine_configs.split(",") and "engine" not in skip:
            cfg = ModelConfig.from_json(ROOT / "configs" / f"{name}.json")
            for qtype in ("f32", "q8_0", "q4_0"):
                lines += engine_rows(cfg, qtype, args.rounds, min(64, cfg.max_seq_len - 17))
    lines.append(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
