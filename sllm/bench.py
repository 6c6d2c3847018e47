"""Benchmarks behind `sllm bench`: kernels, a training step, generation, per backend.

Each backend runs in its own worker process (`python -m sllm.bench WORKER_JSON`), so its
peak resident memory is its own and a crash in one backend cannot take the others down.
Results are medians with their spread (min..max) over repeats; ratios to numpy are
computed from figures measured in the same run.
"""
from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .threads import blas_limited
from .timing import timed

SUITES = ("kernels", "train", "generate")


@dataclass
class Job:
    """What one worker measures."""

    backend: str
    suites: list[str]
    config: dict[str, Any]
    batch: int = 16
    seq_len: int = 128
    threads: int | None = None
    repeats: int = 5
    gen_tokens: int = 64
    extra: dict[str, Any] = field(default_factory=dict)


def train_step(model: Any, opt: Any, x: Any, y: Any, grad_clip: float = 1.0) -> float:
    """One training step as `sllm train` takes it by default: forward_backward, the gradient
    norm clipped to grad_clip (0: no clipping), the optimizer step. Every benchmark of a
    training step (sllm bench, bench/*.py) times this function; returns the loss."""
    loss = model.forward_backward(x, y)
    if grad_clip:
        opt.clip_grad_norm(grad_clip)
    opt.step()
    return loss


def _row(suite: str, name: str, times: list[float], work: float, unit: str,
         flops: float | None = None) -> dict[str, Any]:
    med = float(np.median(times))
    row = {"suite": suite, "name": name, "median_s": med, "min_s": float(min(times)),
           "max_s": float(max(times)), "repeats": len(times), unit: work / med}
    if flops is not None:
        row["gflops"] = flops / med / 1e9
    return row


# ---- the suites (run inside a worker) ----------------------------------------------------------
# FLOPs of the kernels dominated by multiply-adds (for GFLOP/s and MFU), from their shapes.
KERNEL_FLOPS: dict[str, Callable[..., float]] = {
    "matmul_fwd": lambda N, C, OC, **_: 2.0 * N * C * OC,
    "matmul_bwd": lambda N, C, OC, **_: 4.0 * N * C * OC,
    "matmul_q_fwd": lambda N, K, OC, **_: 2.0 * N * K * OC,
    "attention_fwd": lambda B, T, H, D, **_: 2.0 * H * D * T * (T + 1) * B,
    "attention_bwd": lambda B, T, H, D, **_: 4.0 * H * D * T * (T + 1) * B,
}


def kernel_suite(backend: Any, cfg: Any, B: int, T: int, repeats: int) -> list[dict[str, Any]]:
    """Every kernel of the contract on the shapes this model uses at batch B, length T
    (sllm/bench_shapes.py), with the conformance cases' argument builders."""
    from .backends import KERNELS, conformance
    from .backends.cases import CASES
    from .bench_shapes import shapes_for
    rows = []
    for kernel in KERNELS:
        spec = CASES[kernel]
        for label, shape in shapes_for(kernel, cfg, B, T):
            args = spec.args(np.random.default_rng(0), **shape)
            call = functools.partial(getattr(backend, kernel),
                                     *conformance.on_backend(backend, args, spec))
            flops = KERNEL_FLOPS[kernel](**shape) if kernel in KERNEL_FLOPS else None
            rows.append(_row("kernels", f"{kernel} {label}", timed(call, repeats),
                             *_work(shape), flops))
    return rows


def _work(shape: dict[str, Any]) -> tuple[float, str]:
    """What a kernel call processes: rows (N, or B*T) or, for flat kernels, elements."""
    if "N" in shape:
        return shape["N"], "rows_per_s"
    if "B" in shape:
        return shape["B"] * shape.get("T", shape.get("Tn", 1)), "rows_per_s"
    if "slots" in shape:
        return len(shape["slots"]), "rows_per_s"
    if "n" in shape:
        return shape["n"], "elements_per_s"
    return 1, "calls_per_s"


def train_suite(model: Any, B: int, T: int, repeats: int) -> list[dict[str, Any]]:
    """One training step: forward, backward, gradient clipping and an AdamW update."""
    from .flops import train_flops_per_token
    from .optim import AdamW
    rng = np.random.default_rng(0)
    V = model.config.vocab_size
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    opt = AdamW(model, lr=1e-4)
    model.train()
    times = timed(lambda: train_step(model, opt, x, y), repeats, warmup=2)
    flops = train_flops_per_token(model.config, T) * B * T
    bare = _row("train", f"step B{B} T{T}", times, B * T, "tokens_per_s", flops)
    return [bare, train_loop_row(model, B, T, e2e_steps(repeats), flops, bare)]


def e2e_steps(repeats: int) -> int:
    """Steps of the end-to-end training-loop row: enough for two evaluations."""
    return max(12, 4 * repeats)


def train_loop_row(model: Any, B: int, T: int, steps: int, step_flops: float,
                   bare: dict[str, Any]) -> dict[str, Any]:
    """`sllm train`'s loop end to end (sllm.train.Trainer): batches from a corpus, the
    schedule, clipping, AdamW, metrics.jsonl, two evaluations and the final checkpoint.
    Its tokens/s next to the bare step's shows what the loop around the step costs; the
    steps' own times (metrics.jsonl) split that into the steps and the fixed costs."""
    import json
    import tempfile

    from .train import Trainer, make_optimizer
    with tempfile.TemporaryDirectory(prefix="sllm-bench-") as out:
        cfg, tok, data = loop_setup(B, T, steps, model.config.vocab_size, out)
        trainer = Trainer(model, tok, data, cfg, make_optimizer(cfg, model), progress=False)
        t0 = time.perf_counter()
        trainer.run()
        wall = time.perf_counter() - t0
        with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
            rates = [json.loads(line)["tokens_per_s"] for line in f if line.strip()]
    row = _row("train", f"train loop B{B} T{T}, {steps} steps", [wall], steps * B * T,
               "tokens_per_s", step_flops * steps)
    row["vs_step"] = row["tokens_per_s"] / bare["tokens_per_s"]
    step_seconds = sum(B * T / r for r in rates)  # log_every=1: one line per step
    row["steps_vs_step"] = steps * B * T / step_seconds / bare["tokens_per_s"]
    row["fixed_s"] = wall - step_seconds
    return row


def loop_setup(B: int, T: int, steps: int, vocab_size: int, out: str
               ) -> tuple[Any, Any, Any]:
    """The training config, character tokenizer and data of the end-to-end row (the
    built-in demo corpus; ids index the model's vocabulary, whatever its size)."""
    from .corpus import generate_corpus
    from .data import TokenData
    from .tokenizer import CharTokenizer
    from .train_config import TrainConfig
    text = generate_corpus(200_000, seed=0)
    tok = CharTokenizer.train(text, min(vocab_size, len(set(text)) + 1), byte_fallback=False)
    data = TokenData.from_text(text, tok, T, B, val_fraction=0.1)
    cfg = TrainConfig(out=out, steps=steps, batch_size=B, seq_len=T, eval_every=steps // 2,
                      eval_batches=2, grad_clip=1.0, warmup=2, checkpoint_every=0,
                      log_every=1)
    return cfg, tok, data


def generate_suite(model: Any, tokens: int, repeats: int) -> list[dict[str, Any]]:
    """Batch-1 sampling with the KV cache after a 16-token prompt (half the context when
    that is shorter)."""
    from .flops import decode_flops_per_token
    cfg = model.config
    n_prompt = min(16, cfg.max_seq_len // 2)
    tokens = min(tokens, cfg.max_seq_len - n_prompt)
    prompt = list(range(n_prompt))
    times = timed(lambda: model.generate(prompt, tokens, temperature=0), max(1, repeats // 2))
    flops = sum(decode_flops_per_token(cfg, n_prompt + i) for i in range(tokens))
    row = _row("generate", f"decode {tokens} tokens, batch 1", times, tokens,
               "tokens_per_s", flops)
    row["weights_gb_per_s"] = row["tokens_per_s"] * decode_weight_bytes(model) / 1e9
    return [row]


def decode_weight_bytes(model: Any) -> int:
    """Bytes of weights one decoded token reads: every parameter (quantized ones as
    stored) but the embedding tables, of which it reads a row, unless the token embedding
    is also the output projection (tied), which reads all of it."""
    sizes = {name: p.nbytes for name, p in model.parameters().items()}
    sizes.update({name: q.nbytes for name, q in model.quantized_weights().items()})
    from .layout import embedding_name
    skip = {"wpe"} | (set() if model.config.tie_embeddings else {embedding_name(model.config)})
    return sum(n for name, n in sizes.items() if name not in skip)


QUANT_TYPES = ("q8_0", "q4_0", "q4_1")


def quant_generate_suite(backend: Any, cfg: Any, tokens: int, repeats: int
                         ) -> list[dict[str, Any]]:
    """The generation benchmark again with the matmul weights in each quantized type."""
    import sllm
    rows = []
    for qtype in QUANT_TYPES:
        model = sllm.SLLM(cfg, backend=backend).quantize(qtype)
        rows += [{**r, "name": f"{r['name']}, {qtype}", "f32_row": r["name"]}
                 for r in generate_suite(model, tokens, repeats)]
    return rows


def quant_gemv_suite(backend: Any, cfg: Any, repeats: int) -> list[dict[str, Any]]:
    """Batch-1 quantized matmul (GEMV) on the model's largest matrix: GB/s of weights read."""
    from .quant import quantize
    rng = np.random.default_rng(0)
    K, M = max(((cfg.embedding_dim, cfg.vocab_size), (cfg.embedding_dim, cfg.ffn_hidden_dim)),
               key=lambda s: s[0] * s[1])
    x, out = backend.from_numpy(rng.standard_normal((1, K)).astype(np.float32)), backend.zeros((1, M))
    w = rng.standard_normal((M, K)).astype(np.float32)
    rows = []
    for qtype in ("f32",) + QUANT_TYPES:
        if qtype == "f32":
            wt = backend.from_numpy(np.ascontiguousarray(w.T))
            call: Callable[[], Any] = functools.partial(backend.matmul_fwd, out, x, wt, None)
            nbytes = wt.nbytes
        else:
            wq = backend.from_numpy(quantize(w, qtype), np.uint8)
            call = functools.partial(backend.matmul_q_fwd, out, x, wq, None, qtype)
            nbytes = wq.nbytes
        times = timed(call, max(repeats, 20), warmup=3)
        row = _row("kernels", f"GEMV 1x{K}x{M} {qtype}", times, 1, "rows_per_s", 2.0 * K * M)
        row["gb_per_s"] = nbytes / row["median_s"] / 1e9
        if qtype != "f32":
            row["f32_row"] = f"GEMV 1x{K}x{M} f32"
        rows.append(row)
    return rows


def run_job(job: Job) -> dict[str, Any]:
    """Measure one backend (in this process); returns rows, memory and capabilities."""
    import sllm
    if job.threads:
        os.environ["SLLM_NUM_THREADS"] = str(job.threads)
    backend = sllm.backends.get(job.backend)
    if job.threads:
        backend.set_num_threads(job.threads)
    with blas_limited(backend):
        return _run_job(job, backend)


def _run_job(job: Job, backend: Any) -> dict[str, Any]:
    import sllm

    from .activations import Activations
    cfg = sllm.ModelConfig.from_dict(job.config)
    T = min(job.seq_len, cfg.max_seq_len)
    rows: list[dict[str, Any]] = []
    model = sllm.SLLM(cfg, backend=backend)
    if "kernels" in job.suites:
        rows += kernel_suite(backend, cfg, job.batch, T, job.repeats)
        rows += quant_gemv_suite(backend, cfg, job.repeats)
    if "train" in job.suites:
        rows += train_suite(model, job.batch, T, job.repeats)
    if "generate" in job.suites:
        rows += generate_suite(model, job.gen_tokens, job.repeats)
        rows += quant_generate_suite(backend, cfg, job.gen_tokens, job.repeats)
    acts = Activations(backend, cfg, job.batch, T, train=True)
    analytic = 4 * model.layout.total * 4 + sum(a.nbytes for a in acts._owned)
    acts.release()
    return {"backend": job.backend, "rows": rows, "batch": job.batch, "seq_len": T,
            "capabilities": dict(backend.capabilities),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "analytic_mb": analytic / 2 ** 20}


# ---- the driver ----------------------------------------------------------------------------------
def run_in_worker(job: Job, timeout: float = 1800) -> dict[str, Any]:
    """Run `job` in a fresh Python process; failures come back as {"error": ...}."""
    cmd = [sys.executable, "-m", "sllm.bench", json.dumps(job.__dict__)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"backend": job.backend, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"backend": job.backend, "error": f"worker failed: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_reference() -> Path | None:
    """bench/torch_ref.py of a source checkout, when present."""
    path = Path(__file__).resolve().parent.parent / "bench" / "torch_ref.py"
    return path if path.exists() else None


def _cpp_measure(method: str, what: str, *args: Any) -> float | None:
    """Run the cpp backend's measuring loop `method`; raises LookupError with why it can't."""
    import sllm
    try:
        backend = sllm.backends.get("cpp")
    except sllm.BackendError as e:
        raise LookupError(f"{what} unknown: {e}") from e
    measure = getattr(backend, method, None)
    if measure is None:
        raise LookupError(f"{what} unknown: the cpp backend has no {method} loop")
    return float(measure(*args))


def peak_gflops() -> tuple[float | None, str]:
    """This machine's FP32 peak (all threads) from the cpp backend's FMA loop, or why not."""
    try:
        return _cpp_measure("peak_gflops", "peak"), "measured by the cpp backend's FMA loop"
    except LookupError as e:
        return None, str(e)


def memory_bandwidth(nbytes: int = 1 << 30) -> tuple[float | None, str]:
    """GB/s of a streaming read of nbytes by the cpp backend's threads, or why unknown."""
    try:
        gbps = _cpp_measure("stream_read_gbps", "bandwidth", 0.3, nbytes)
    except LookupError as e:
        return None, str(e)
    return gbps, f"streaming read of {nbytes >> 20} MB by the cpp backend"


def add_ratios(results: list[dict[str, Any]], peak: float | None,
               bandwidth: float | None = None) -> None:
    """Speed ratio to numpy (and to torch) for every row they also have (> 1: faster);
    MFU where a peak is known; the share of memory bandwidth for rows that report GB/s;
    a quantized row's speed ratio to the same backend's float32 row."""
    base = {r["name"]: r for res in results if res.get("backend") == "numpy"
            for r in res.get("rows", [])}
    torch = {r["name"]: r for res in results if res.get("backend") == "torch"
             for r in res.get("rows", [])}
    for res in results:
        for r in res.get("rows", []):
            ref, tref = base.get(r["name"]), torch.get(r["name"])
            r["vs_numpy"] = ref["median_s"] / r["median_s"] if ref else None
            r["vs_torch"] = tref["median_s"] / r["median_s"] if tref else None
            r["mfu"] = r["gflops"] / peak if peak and "gflops" in r else None
            if bandwidth and ("gb_per_s" in r or "weights_gb_per_s" in r):
                r["bw"] = r.get("gb_per_s", r.get("weights_gb_per_s", 0.0)) / bandwidth
        own = {r["name"]: r for r in res.get("rows", [])}
        for r in res.get("rows", []):
            if r.get("f32_row") in own:
                r["vs_f32"] = own[r["f32_row"]]["median_s"] / r["median_s"]


def main() -> None:
    """Worker entry point: one Job as JSON in argv[1], results as one JSON line on stdout."""
    job = Job(**json.loads(sys.argv[1]))
    if job.backend == "torch":
        ref = torch_reference()
        if ref is None:
            raise SystemExit("bench/torch_ref.py not found: run from a source checkout")
        sys.path.insert(0, str(ref.parent))
        import torch_ref
        result = torch_ref.run_job(job)
    else:
        result = run_job(job)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
