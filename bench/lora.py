"""LoRA's targets (issue 25): adapter file size, fine-tuning peak RSS, and quality.

    python bench/lora.py [--backend cpp] [--part size,rss,quality] [--out bench/results]

- size: the rank-8 adapter on every attention and MLP weight of configs/small-model.json,
  as a file (f16 as `sllm finetune` writes it, and f32), against the f32 model file
  (target <= 2%).
- rss: peak RSS (resource.getrusage maxrss) of fine-tuning configs/medium-model.json (a
  file, loaded as finetune loads it) for a few AdamW steps at batch 4 x 128, LoRA (rank 8,
  all) vs every weight, each in its own fresh subprocess; also each peak above an idle
  process that imported sllm and opened the backend (the runtime both pay: what
  fine-tuning itself adds). Target: LoRA <= 0.45x full.
- quality: a base (baby-gpt, characters) trained on the built-in demo corpus, then
  fine-tuned for the same steps (LoRA at lr 1e-2, full at 1e-3: each one's default in
  `sllm finetune`; then 3e-3, 3e-2 and 3e-5 to 3e-3: --lora-lr / --full-lr, the
  trade-off between learning the new text and keeping the old, plotted as a third panel)
  on a held-out domain text (shared/corpora/tinyshakespeare.txt when present, else a text
  this script writes) by LoRA rank 8 and by full fine-tuning. Reported: each run's held-out
  perplexity on the domain text and the base's own validation perplexity after it (target:
  LoRA within 10% of full on the domain; its damage to the base's own text at most half of
  full's). Every run also sweeps: each method of VARIANTS (rsLoRA, a larger alpha = LoRA+,
  rank 32, weight decay) at its own rates, each evaluation step recorded (what early
  stopping could keep), and the LoRA points meeting both targets listed against two
  references, full fine-tuning at its default rate and at its best held-out one. Plot
  (--plot): docs/lora-quality.png, the third panel the frontier, held-out ppl vs the base's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent.parent / "shared" / "corpora" / "tinyshakespeare.txt"
RSS_STEPS, RSS_BATCH, RSS_SEQ = 3, 4, 128


def adapter_size(backend: str) -> dict[str, float]:
    """Bytes of the small model's f32 file and of its rank-8 all-target adapter."""
    import sllm
    from sllm.lora import Adapter, LoraConfig
    from sllm.paths import CONFIG_DIR
    model = sllm.SLLM(CONFIG_DIR / "small-model.json", backend=backend)
    with tempfile.TemporaryDirectory() as d:
        model.save(os.path.join(d, "model.sllm"))
        adapter = Adapter.create(model, LoraConfig(rank=8, targets="all"), 0)
        adapter.save(os.path.join(d, "a32.sllm"))
        adapter.save(os.path.join(d, "a16.sllm"), dtype="f16")  # what sllm finetune writes
        m, a32, a16 = (os.path.getsize(os.path.join(d, n))
                       for n in ("model.sllm", "a32.sllm", "a16.sllm"))
    return {"model_bytes": m, "adapter_f16_bytes": a16, "ratio_f16": a16 / m,
            "adapter_f32_bytes": a32, "ratio_f32": a32 / m}


def _rss_child(mode: str, backend: str, path: str) -> None:
    """One process: idle (sllm imported, the backend opened), or the model at `path` loaded
    as finetune loads it and a few lora or full fine-tuning steps; prints maxrss KiB."""
    import sllm
    from sllm.lora import Adapter, LoraConfig
    from sllm.optim import AdamW
    from sllm.paths import CONFIG_DIR
    if mode == "make":
        sllm.SLLM(CONFIG_DIR / "medium-model.json", backend="numpy").save(path)
        return
    sllm.backends.get(backend)
    if mode != "idle":
        model = sllm.load(path, backend=backend, mmap=False).train()
        if mode == "lora":
            model.attach_adapter(Adapter.create(model, LoraConfig(rank=8), 0))
        opt = AdamW(model.trainable(), lr=1e-3)
        rng = np.random.default_rng(0)
        V = model.config.vocab_size
        for _ in range(RSS_STEPS):
            x = rng.integers(0, V, (RSS_BATCH, RSS_SEQ))
            model.forward_backward(x, np.roll(x, -1, axis=1))
            opt.step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss(backend: str) -> dict[str, float]:
    """Each mode in its own process (alternating, twice), the lower peak of each."""
    peaks: dict[str, list[int]] = {"idle": [], "lora": [], "full": []}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "medium.sllm")
        # Linux keeps a process's peak RSS across fork and exec: a child would report this
        # process's peak as its own, so this process stays small (the file is a child's work)
        subprocess.run([sys.executable, __file__, "--rss-child", "make", "--model", path],
                       check=True)
        for _ in range(2):
            for mode in peaks:
                out = subprocess.run([sys.executable, __file__, "--rss-child", mode, "--backend",
                                      backend, "--model", path], capture_output=True, text=True,
                                     check=True)
                peaks[mode].append(int(out.stdout.split()[-1]))
    low = {m: min(v) / 1024 for m, v in peaks.items()}  # MiB
    return {"idle_mib": low["idle"], "lora_mib": low["lora"], "full_mib": low["full"],
            "ratio": low["lora"] / low["full"],
            "ratio_above_idle": (low["lora"] - low["idle"]) / (low["full"] - low["idle"]),
            "batch": RSS_BATCH, "seq_len": RSS_SEQ}


def _domain_text(tmp: str) -> str:
    """The held-out domain text: tinyshakespeare (first 200 KB) when present, else a written one."""
    path = os.path.join(tmp, "domain.txt")
    if SHAKESPEARE.is_file():
        text = SHAKESPEARE.read_text(encoding="utf-8")[:200_000]
    else:
        rng = np.random.default_rng(0)
        words = "thou art the king of ships and storms my lord shall sail at dawn".split()
        text = " ".join(rng.choice(words, 40_000))
    Path(path).write_text(text, encoding="utf-8")
    return path


# The quality sweep's methods: TrainConfig options and rates (the first rate is the headline
# run of "lora" and "full", each one's `sllm finetune` default). LoRA+ (B's rate ratio x A's)
# is not listed: under Adam it is the same update as alpha x ratio, because B starts at zero
# and Adam's step does not depend on the gradient's scale (s * B moves ratio x faster, and A's
# gradient sees the same s * B); "lora alpha 256" is LoRA+ at ratio 16's rates up to clipping.
VARIANTS: dict[str, tuple[dict[str, Any], list[float]]] = {
    "full": ({}, [1e-3, 3e-5, 1e-4, 3e-4, 3e-3]),
    "lora": ({"lora_rank": 8}, [1e-2, 3e-3, 3e-2]),
    "lora rsLoRA (alpha/sqrt r)": ({"lora_rank": 8, "lora_alpha": 16 * math.sqrt(8)},
                                   [1e-3, 3e-3, 1e-2]),
    "lora alpha 256 (= LoRA+ 16)": ({"lora_rank": 8, "lora_alpha": 256.0}, [3e-4, 1e-3, 3e-3]),
    "lora rank 32": ({"lora_rank": 32}, [3e-3, 1e-2]),
    "lora weight decay 1": ({"lora_rank": 8, "weight_decay": 1.0}, [1e-2, 3e-2]),
}


def _fine_tune(base_dir: str, domain: str, run: str, lr: float, options: dict[str, Any],
               common: dict[str, Any], ft_steps: int) -> tuple[Any, list[tuple[int, float, float]]]:
    """One fine-tuning run; its trainer and (step, held-out ppl, base's own ppl) at every
    evaluation: the points early stopping could keep. Both perplexities are over the whole
    held-out split (the domain's: 40,000 tokens; the training loop's own evaluation reads
    eval_batches x batch x seq_len = 4,096 of them, which moved the ratio by 1.7 points)."""
    from sllm.evaluate import evaluate, held_out_ids
    from sllm.train import TrainConfig, prepare
    base_ids = held_out_ids(base_dir)
    cfg = {**common, "weight_decay": 0.0, **options}
    trainer = prepare(TrainConfig(init_from=base_dir, corpus=domain, steps=ft_steps, lr=lr,
                                  warmup=10, out=run, **cfg), progress=False)
    path: list[tuple[int, float, float]] = []
    domain_ids = held_out_ids(run)

    def measure(t: Any) -> None:
        if t.step % t.cfg.eval_every == 0 or t.step == ft_steps:
            path.append((t.step, evaluate(t.model, domain_ids)["ppl"],
                         evaluate(t.model, base_ids)["ppl"]))
            t.model.train()

    trainer.on_step = measure
    trainer.run()
    trainer.model.eval()
    return trainer, path


def quality(backend: str, base_steps: int, ft_steps: int, plot: Path,
            variants: dict[str, tuple[dict[str, Any], list[float]]]) -> dict[str, Any]:
    """Train a base on the demo corpus, fine-tune it by every variant at each of its rates
    ("lora" and "full" first rates: the headline runs); perplexities before/after, every
    (rate, held-out ppl, base's ppl) point, and which LoRA points meet both targets."""
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:  # ~100 MB of run dirs
        results, curves = _sweep(tmp, backend, base_steps, ft_steps, variants)
    results["domain_ratio"] = results["lora_domain_ppl"] / results["full_domain_ppl"]
    results["damage_ratio"] = ((results["lora_base_val_ppl"] - results["base_val_ppl"])
                               / max(results["full_base_val_ppl"] - results["base_val_ppl"], 1e-9))
    results["targets"] = _targets(results)
    _plot(curves, results, plot)
    return results


def _sweep(tmp: str, backend: str, base_steps: int, ft_steps: int,
           variants: dict[str, tuple[dict[str, Any], list[float]]]
           ) -> tuple[dict[str, Any], dict[str, list[tuple[int, float, float]]]]:
    """The base, then every variant's runs in `tmp`: the results and the headline curves."""
    from sllm.evaluate import evaluate, held_out_ids
    from sllm.train import TrainConfig, prepare
    common: dict[str, Any] = dict(backend=backend, batch_size=8, seq_len=64, eval_every=max(ft_steps // 5, 1),
                  eval_batches=8, checkpoint_every=0, seed=0)
    base_dir = os.path.join(tmp, "base")
    prepare(TrainConfig(model=str(ROOT / "configs" / "baby-gpt.json"), tokenizer="char",
                        demo_chars=400_000,
                        steps=base_steps, lr=3e-3, warmup=20, out=base_dir, **common),
            progress=False).run()
    domain = _domain_text(tmp)
    results: dict[str, Any] = {"sweep": []}
    curves: dict[str, list[tuple[int, float, float]]] = {}
    runs = [(name, lr) for name in variants for lr in variants[name][1]]
    for i, (name, lr) in enumerate(runs):
        run = os.path.join(tmp, f"run-{i}")
        t0 = time.perf_counter()
        trainer, path = _fine_tune(base_dir, domain, run, lr, variants[name][0], common, ft_steps)
        _, domain_ppl, base_ppl = path[-1]
        results["sweep"].append({"method": name, "lr": lr, "domain_ppl": domain_ppl,
                                 "base_val_ppl": base_ppl, "path": path})
        if name not in ("lora", "full") or name in curves:
            continue
        results[f"{name}_seconds"] = time.perf_counter() - t0
        results[f"{name}_domain_ppl"], results[f"{name}_base_val_ppl"] = domain_ppl, base_ppl
        curves[name] = path
        if trainer.model.detach_adapter() is not None:  # the untouched base, on the same split
            results["base_domain_ppl"] = evaluate(trainer.model, held_out_ids(run))["ppl"]
            results["base_val_ppl"] = evaluate(trainer.model, held_out_ids(base_dir))["ppl"]
    return results, curves


def _targets(r: dict[str, Any]) -> dict[str, Any]:
    """Each reference full run (the headline rate, and the best held-out one): the region a
    LoRA point must reach (held-out <= 1.1x full's, base's own <= base + half full's damage)
    and the LoRA points (any variant, rate or evaluation step) inside it."""
    fulls = [p for p in r["sweep"] if p["method"] == "full"]
    refs = {"full at its default rate": fulls[0],
            "full at its best held-out rate": min(fulls, key=lambda p: p["domain_ppl"])}
    out = {}
    for label, ref in refs.items():
        x_max = 1.1 * ref["domain_ppl"]
        y_max = r["base_val_ppl"] + 0.5 * (ref["base_val_ppl"] - r["base_val_ppl"])
        hits = [{"method": p["method"], "lr": p["lr"], "step": s, "domain_ppl": x, "base_val_ppl": y}
                for p in r["sweep"] if p["method"] != "full"
                for s, x, y in p["path"] if x <= x_max and y <= y_max]
        out[label] = {"lr": ref["lr"], "domain_ppl_max": x_max, "base_val_ppl_max": y_max,
                      "lora_points_meeting_both": hits}
    return out


def _plot(curves: dict[str, list[tuple[int, float, float]]], r: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 5), width_ratios=(1, 0.6, 1.6))
    for name, points in curves.items():
        ax1.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                 label=f"{name} fine-tuning")
    ax1.axhline(r["base_domain_ppl"], color="gray", ls="--", label="base (no fine-tuning)")
    ax1.set(xlabel="step", ylabel="held-out perplexity (domain text)", yscale="log",
            title="Learning the new text")
    ax1.legend()
    names = ["base", "lora", "full"]
    values = [r["base_val_ppl"], r["lora_base_val_ppl"], r["full_base_val_ppl"]]
    ax2.bar(names, values, color=["gray", "C1", "C0"])  # the frontier's colours
    ax2.set(ylabel="validation perplexity (base's own text)", title="Forgetting the old text")
    _plot_frontier(ax3, r)
    fig.tight_layout()
    draft = path.with_suffix(".draft.png")
    fig.savefig(draft, dpi=100)
    os.replace(draft, path)


def _plot_frontier(ax: Any, r: dict[str, Any]) -> None:
    """Held-out ppl vs the base's own after, each method's runs over its rates (faint: the
    earlier evaluations, what early stopping could keep) and the targets' regions."""
    from matplotlib.patches import Rectangle
    for i, name in enumerate(dict.fromkeys(p["method"] for p in r["sweep"])):
        runs = sorted((p for p in r["sweep"] if p["method"] == name), key=lambda p: p["domain_ppl"])
        color, style = f"C{i}", "-" if name == "full" else "--"
        ax.plot([p["domain_ppl"] for p in runs], [p["base_val_ppl"] for p in runs], style,
                marker="o", color=color, label=name, lw=2.5 if name == "full" else 1.2)
        for p in runs:
            ax.annotate(f"{p['lr']:g}", (p["domain_ppl"], p["base_val_ppl"]), fontsize=7,
                        color=color, xytext=(3, 3), textcoords="offset points")
            ax.scatter([x for _, x, _ in p["path"][:-1]], [y for _, _, y in p["path"][:-1]],
                       s=8, color=color, alpha=0.3)
    for (label, t), ls in zip(r["targets"].items(), (":", "-."), strict=True):
        ax.add_patch(Rectangle((0, 0), t["domain_ppl_max"], t["base_val_ppl_max"], fill=False,
                               ls=ls, color="green", label=f"target vs {label} ({t['lr']:g})"))
    ax.axhline(r["base_val_ppl"], color="gray", ls="--", label="base before")
    xs = [x for p in r["sweep"] for _, x, _ in p["path"]]
    ys = [y for p in r["sweep"] for _, _, y in p["path"]] + [r["base_val_ppl"]]
    ax.set(xlim=(min(xs) * 0.97, min(max(xs), 2 * min(xs)) * 1.02),
           ylim=(min(ys) * 0.97, max(ys) * 1.02),
           xlabel="held-out perplexity (domain text)", ylabel="base's own perplexity after",
           title="Frontier: each method over its rates, lr labelled (lower-left is better)")
    ax.legend(fontsize=7, loc="upper left")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--part", default="size,rss,quality")
    ap.add_argument("--base-steps", type=int, default=400)
    ap.add_argument("--ft-steps", type=int, default=300)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                    help="the quality sweep's methods (lora and full always run)")
    ap.add_argument("--lora-lr", type=float, nargs="+", default=VARIANTS["lora"][1],
                    help="LoRA's rates; the first is the headline run (sllm finetune's default)")
    ap.add_argument("--full-lr", type=float, nargs="+", default=VARIANTS["full"][1],
                    help="full fine-tuning's rates; the first is the headline run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "lora-quality.png"))
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return _rss_child(args.rss_child, args.backend, args.model)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"backend": args.backend}
    parts = args.part.split(",")
    if "rss" in parts:  # first, while this process is small (see peak_rss)
        report["rss"] = peak_rss(args.backend)
        print("rss", json.dumps(report["rss"]), flush=True)
    if "size" in parts:
        report["size"] = adapter_size(args.backend)
        print("size", json.dumps(report["size"]), flush=True)
    if "quality" in parts:
        variants = {n: VARIANTS[n] for n in args.variants}
        variants["lora"] = (VARIANTS["lora"][0], args.lora_lr)
        variants["full"] = (VARIANTS["full"][0], args.full_lr)
        report["quality"] = quality(args.backend, args.base_steps, args.ft_steps, Path(args.plot),
                                    variants)
        print("quality", json.dumps(report["quality"]), flush=True)
    path = out_dir / "lora.json"  # the parts not run this time keep their last figures
    kept = json.loads(path.read_text()) if path.is_file() else {}
    draft = path.with_suffix(".draft")
    draft.write_text(json.dumps({**kept, **report}, indent=2) + "\n")
    os.replace(draft, path)


if __name__ == "__main__":
    main()
