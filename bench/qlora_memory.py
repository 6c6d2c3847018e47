"""Peak memory of fine-tuning a medium model: full fine-tuning (every weight, AdamW state for
each) against a LoRA adapter on the float32 base and on q8_0 / q4_0 / q4_1 bases (QLoRA:
the base frozen and quantized, the gradient passing through matmul_q_bwd), some also with
activation checkpointing (SLLM.recompute, "+recompute"). Issue 25's targets: LoRA <= 0.45x
and a q4_0 base <= 0.25x of full fine-tuning's peak RSS.

    python bench/qlora_memory.py [--config medium-model] [--backend cpp] [--batch 16]
                                 [--seq 256] [--steps 3] [--rank 8] [--modes full,...] [--eval]

Issue 25's figure: `python bench/qlora_memory.py --batch 16 --seq 256 --steps 2` (sllm
finetune's default batch), each mode against "full" (plain full fine-tuning of the float32
model, no recompute).

Each mode runs in its own Python process (resource.getrusage's ru_maxrss is a process's
high-water mark), loading the base from a file as a user would (a quantized file never
exists as float32 in that process). The bases are written by another process: on Linux a
child's ru_maxrss starts from its parent's resident set at the fork, so the parent that
starts the workers stays small (it never imports numpy). Printed per mode: the peak RSS,
the baseline (the same process after importing sllm and starting the backend, before
loading the model), the peak above that baseline (what fine-tuning itself holds), and both
as ratios to plain full fine-tuning.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MODES = ("full", "lora", "qlora-q8_0", "qlora-q4_0", "qlora-q4_1", "full+recompute",
         "lora+recompute", "qlora-q4_0+recompute")


def peak_mb() -> float:
    """This process's peak resident set so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(mode: str, path: str, backend: str, batch: int, seq: int, steps: int,
           rank: int, evaluate: bool) -> dict[str, Any]:
    """Fine-tune the model at `path` for `steps` AdamW steps in this process (evaluate: and
    after each, the loss of a batch of the same shape in eval mode, as `sllm finetune`'s
    evaluations); the peaks."""
    import numpy as np

    import sllm
    from sllm.lora import Adapter, LoraConfig
    from sllm.optim import AdamW
    sllm.backends.get(backend)
    baseline = peak_mb()
    model = sllm.load(path, backend=backend)
    model.recompute = mode.endswith("+recompute")
    if not mode.startswith("full"):
        model.attach_adapter(Adapter.create(model, LoraConfig(rank=rank), seed=0))
    optimizer = AdamW(model.trainable(), lr=1e-4)
    model.train()
    rng = np.random.default_rng(0)
    V = model.config.vocab_size
    losses = []
    for _ in range(steps):
        x, y = rng.integers(0, V, (batch, seq)), rng.integers(0, V, (batch, seq))
        losses.append(model.forward_backward(x, y))
        optimizer.step()
        if evaluate:
            model.eval().loss(x, y)
            model.train()
    trained = model.trainable().flat_params.size
    return {"mode": mode, "peak_mb": peak_mb(), "baseline_mb": baseline,
            "trainable": int(trained), "loss": [float(v) for v in losses]}


def run_mode(mode: str, files: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """`mode` in a fresh Python process (this script with --worker)."""
    base = mode.removesuffix("+recompute")
    path = files["f32" if base in ("full", "lora") else base.split("-")[1]]
    cmd = [sys.executable, __file__, "--worker", mode, str(path), "--backend", args.backend,
           "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
           "--rank", str(args.rank), *(["--eval"] if args.eval else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_bases(config: str, directory: Path) -> dict[str, Path]:
    """The float32 base and its q8_0, q4_0, q4_1 quantizations, saved in `directory`."""
    import sllm
    files = {"f32": directory / "f32.sllm"}
    sllm.SLLM(config, backend="numpy", seed=0).save(files["f32"])
    for qtype in ("q8_0", "q4_0", "q4_1"):
        files[qtype] = directory / f"{qtype}.sllm"
        sllm.load(files["f32"], backend="numpy").quantize(qtype).save(files[qtype])
    return files


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of every mode against full fine-tuning."""
    full = next(r for r in rows if r["mode"] == "full")
    above_full = full["peak_mb"] - full["baseline_mb"]
    lines = ["| mode | trainable parameters | peak RSS | vs full | above baseline | vs full |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        above = r["peak_mb"] - r["baseline_mb"]
        lines.append(f"| {r['mode']} | {r['trainable']:,} | {r['peak_mb']:.0f} MiB | "
                     f"{r['peak_mb'] / full['peak_mb']:.2f}x | {above:.0f} MiB | "
                     f"{above / above_full:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="medium-model")
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--eval", action="store_true",
                        help="after each step, a validation loss on a batch of the same shape")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--write-bases", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_bases:
        write_bases(args.config, Path(args.write_bases))
        return
    if args.worker:
        mode, path = args.worker
        print(json.dumps(worker(mode, path, args.backend, args.batch, args.seq, args.steps,
                                args.rank, args.eval)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, __file__, "--write-bases", tmp, "--config", args.config],
                       check=True)
        files = {name: Path(tmp) / f"{name}.sllm" for name in ("f32", "q8_0", "q4_0", "q4_1")}
        rows = [run_mode(mode, files, args) for mode in args.modes.split(",")]
    print(f"fine-tuning {args.config} on {args.backend}: batch {args.batch} x {args.seq} "
          f"tokens, {args.steps} AdamW steps{' each with an evaluation' if args.eval else ''}, "
          f"LoRA rank {args.rank} on every target; baseline = the process after importing "
          f"sllm, before loading the model\n")
    print(table(rows))


if __name__ == "__main__":
    main()
