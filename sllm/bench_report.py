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


WIDE_COLUMNS = ("backend", "benchmark", "median", "spread", "rate", "of BW", "GFLOP/s",
                "vs f32", "vs numpy", "vs torch", "MFU")
NARROW_COLUMNS = ("backend", "benchmark", "median", "rate", "of BW", "vs f32", "vs numpy",
                  "vs torch", "MFU")
# Columns left out when no row has a value for them.
OPTIONAL = {"of BW": "bw", "vs f32": "vs_f32", "vs torch": "vs_torch", "MFU": "mfu"}
RATES = ("tokens_per_s", "rows_per_s", "elements_per_s", "calls_per_s")


def render(report: dict[str, Any], console: Any, wide: bool = False) -> None:
    """One rich table per suite, a footer saying what the ratios mean, then the machine's
    peaks and the unavailable backends with their reasons. Narrow (the default) fits 100
    columns: no spread or GFLOP/s column, rates in k/M/G. Either way a column no row fills
    (vs torch without --vs torch, say) is left out."""
    rows = [(res["backend"], r) for res in report["results"] for r in res.get("rows", [])]
    for suite in dict.fromkeys(r["suite"] for _, r in rows):
        in_suite = [(b, r) for b, r in rows if r["suite"] == suite]
        console.print(_table(suite_title(suite, report), _columns(in_suite, wide), in_suite, wide))
    for line in _footer(rows, wide):
        console.print(line, highlight=False, soft_wrap=False)
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


def _columns(rows: list[tuple[str, dict[str, Any]]], wide: bool) -> tuple[str, ...]:
    return tuple(c for c in (WIDE_COLUMNS if wide else NARROW_COLUMNS)
                 if c not in OPTIONAL or any(r.get(OPTIONAL[c]) for _, r in rows))


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, dict[str, Any]]],
           wide: bool) -> Any:
    from rich import box
    from rich.table import Table
    table = Table(title=title, box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD)
    for col in columns:
        table.add_column(col, justify="left" if col in ("backend", "benchmark") else "right")
    for backend, r in rows:
        cells = {"backend": backend, "benchmark": r["name"],
                 "median": f"{r['median_s'] * 1e3:.2f} ms",
                 "spread": f"{r['min_s'] * 1e3:.2f}..{r['max_s'] * 1e3:.2f}",
                 "rate": _rate(r, wide), "of BW": f"{r['bw']:.0%}" if r.get("bw") else "",
                 "GFLOP/s": f"{r['gflops']:.1f}" if "gflops" in r else "",
                 "vs f32": f"{r['vs_f32']:.2f}x" if r.get("vs_f32") else "",
                 "vs numpy": f"{r['vs_numpy']:.2f}x" if r.get("vs_numpy") else "",
                 "vs torch": f"{r['vs_torch']:.2f}x" if r.get("vs_torch") else "",
                 "MFU": f"{r['mfu']:.0%}" if r.get("mfu") else ""}
        table.add_row(*(cells[c] for c in columns))
    return table


def _rate(r: dict[str, Any], wide: bool) -> str:
    """tokens/s (or rows, elements, calls), or GB/s."""
    if "gb_per_s" in r:
        return f"{r['gb_per_s']:.1f} GB/s"
    key = next((k for k in RATES if k in r), None)
    return "" if key is None else f"{_count(r[key], wide)} {key.replace('_per_s', '/s')}"


def _count(x: float, wide: bool) -> str:
    """12,345,678 as it is (wide) or as 12.3M: a narrow column."""
    if wide or x < 100_000:
        return f"{x:,.0f}"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:,.0f}"


def _footer(rows: list[tuple[str, dict[str, Any]]], wide: bool) -> list[str]:
    """What the ratios mean, then how the training loop compares with the bare step."""
    lines = ["vs numpy, vs torch: numpy's (torch's) median time for the same row divided by "
             "this one's; above 1.00x is faster."]
    if any(r.get("mfu") for _, r in rows):
        lines.append("MFU: the row's GFLOP/s as a share of the FP32 peak measured below.")
    if any(r.get("vs_f32") for _, r in rows):
        lines.append("vs f32: the same backend's float32 row's median time divided by this "
                     "quantized row's.")
    if any(r.get("bw") for _, r in rows):
        lines.append("of BW: bytes read per second (a decode step reads every weight) as a "
                     "share of the streaming-read bandwidth below; above 100% the data came "
                     "from cache, not memory.")
    if not wide:
        lines.append("--wide adds the spread (fastest..slowest repeat) and GFLOP/s columns.")
    for backend, r in rows:
        if "vs_step" in r:
            lines.append(f"{backend}: `sllm train`'s loop ({r['name']}) gives {r['vs_step']:.0%} "
                         "of the bare step's tokens/s" + _loop_detail(r))
    return lines


def _loop_detail(r: dict[str, Any]) -> str:
    if "steps_vs_step" not in r:
        return "."
    return (f"; its steps, timed inside the loop, ran at {r['steps_vs_step']:.0%} of the bare "
            "step's speed (above 100%: faster), and evaluations, the checkpoint and first-step "
            f"setup took {r['fixed_s']:.2f} s.")


def write_json(report: dict[str, Any], path: str) -> None:
    """Write the report as JSON (atomically)."""
    from .fileio import atomic_write
    with atomic_write(path) as f:
        f.write(json.dumps(report, indent=1).encode("utf-8"))
