"""`sllm bench`: run the suites on each backend, show a table per suite, write JSON."""
from __future__ import annotations

import json
import platform
import time
from typing import Any

from .bench import Job, add_ratios, memory_bandwidth, peak_gflops, run_in_worker, torch_reference


def run_bench(names: list[str], suites: list[str], config: dict[str, Any], batch: int,
              seq_len: int, threads: int | None, repeats: int, vs_torch: bool,
              console: Any = None) -> dict[str, Any]:
    """Measure every named backend (each in its own process) and return the report."""
    from rich.progress import Progress

    import sllm
    info = {r["name"]: r for r in sllm.backends.info()}
    results: list[dict[str, Any]] = []
    runnable = [n for n in names if info.get(n, {}).get("available")]
    for n in names:
        if n not in runnable:
            why = info[n]["reason"] if n in info else "not registered"
            results.append({"backend": n, "error": f"unavailable: {why}"})
    if vs_torch:
        runnable.append("torch")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(runnable))
        for n in runnable:
            progress.update(task, description=f"benchmarking {n}")
            job_suites = [s for s in suites if s != "kernels"] if n == "torch" else suites
            results.append(run_in_worker(Job(n, job_suites, config, batch, seq_len, threads,
                                             repeats)))
            progress.advance(task)
    peak, peak_note = peak_gflops()
    bandwidth, bandwidth_note = memory_bandwidth()
    add_ratios(results, peak, bandwidth)
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "python": platform.python_version()},
            "config": config, "batch": batch, "seq_len": seq_len, "threads": threads,
            "peak_gflops": peak, "peak_note": peak_note, "results": results,
            "bandwidth_gbps": bandwidth, "bandwidth_note": bandwidth_note,
            "torch_available": torch_reference() is not None}


def suite_title(suite: str, report: dict[str, Any]) -> str:
    """A suite's heading, with the sizes its rows really used (T is capped by the model's
    max_seq_len, so it can be less than the T asked for)."""
    used = [r for r in report["results"] if "seq_len" in r]
    B = used[0]["batch"] if used else report["batch"]
    T = used[0]["seq_len"] if used else report["seq_len"]
    if suite == "kernels":
        return f"kernels (the model's shapes at B={B}, T={T}: N = B*T = {B * T} rows)"
    if suite == "train":
        return f"train (one step: forward, backward, clip, AdamW at B={B}, T={T})"
    if suite == "generate":
        return "generate (batch 1, greedy, after a 16-token prompt)"
    return suite


def render(report: dict[str, Any], console: Any) -> None:
    """One rich table per suite, plus the unavailable backends and their reasons."""
    from rich.table import Table
    rows = [(res["backend"], r) for res in report["results"] for r in res.get("rows", [])]
    for suite in dict.fromkeys(r["suite"] for _, r in rows):
        table = Table(title=suite_title(suite, report))
        for col in ("backend", "benchmark", "median", "spread", "rate", "GFLOP/s", "vs numpy",
                    "vs torch", "MFU"):
            table.add_column(col, justify="left" if col in ("backend", "benchmark") else "right")
        for backend, r in rows:
            if r["suite"] != suite:
                continue
            rate = next((f"{r[k]:,.0f} {k.replace('_per_s', '/s')}" for k in
                         ("tokens_per_s", "rows_per_s", "elements_per_s", "calls_per_s")
                         if k in r), "")
            if "gb_per_s" in r:
                rate = f"{r['gb_per_s']:.1f} GB/s" + (f" ({r['bw']:.0%} of BW)" if r.get("bw")
                                                      else "")
            elif r.get("bw"):  # decoding: the weights it streams per second, against BW
                rate += f" ({r['bw']:.0%} of BW)"
            table.add_row(backend, r["name"], f"{r['median_s'] * 1e3:.2f} ms",
                          f"{r['min_s'] * 1e3:.2f}..{r['max_s'] * 1e3:.2f}", rate,
                          f"{r['gflops']:.1f}" if "gflops" in r else "",
                          f"{r['vs_numpy']:.2f}x" if r.get("vs_numpy") else "",
                          f"{r['vs_torch']:.2f}x" if r.get("vs_torch") else "",
                          f"{r['mfu']:.0%}" if r.get("mfu") else "")
        console.print(table)
    for backend, r in rows:
        if "vs_step" in r:
            detail = (f": its steps at {r['steps_vs_step']:.0%}, plus {r['fixed_s']:.2f} s of "
                      "evaluations, checkpoint and first-step setup") if "steps_vs_step" in r else ""
            console.print(f"{backend}: the training loop runs at {r['vs_step']:.0%} of the bare "
                          f"step's tokens/s ({r['name']}){detail}")
    for res in report["results"]:
        if "error" in res:
            console.print(f"[yellow]{res['backend']}[/]: {res['error']}")
        else:
            analytic = "" if res.get("analytic_mb") is None else (
                f" (parameters + gradients + AdamW state + activations: "
                f"{res['analytic_mb']:.0f} MB)")
            console.print(f"{res['backend']}: peak RSS {res['peak_rss_mb']:.0f} MB{analytic}")
    note = f"{report['peak_gflops']:.0f} GFLOP/s" if report["peak_gflops"] else ""
    console.print(f"FP32 peak: {note} ({report['peak_note']})")
    if report.get("bandwidth_gbps"):
        console.print(f"memory bandwidth: {report['bandwidth_gbps']:.1f} GB/s "
                      f"({report['bandwidth_note']})")


def write_json(report: dict[str, Any], path: str) -> None:
    """Write the report as JSON (atomically)."""
    from .fileio import atomic_write
    with atomic_write(path) as f:
        f.write(json.dumps(report, indent=1).encode("utf-8"))
