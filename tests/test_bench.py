"""The benchmark driver in smoke mode: every available backend, the documented fields."""
import json

import pytest
from rich.console import Console

import sllm
from sllm.bench_report import render, run_bench, write_json

TINY = sllm.ModelConfig(vocab_size=50, embedding_dim=16, num_layers=1, num_heads=2,
                        ffn_hidden_dim=32, max_seq_len=16).to_dict()


def test_bench_smoke(tmp_path):
    names = [r["name"] for r in sllm.backends.info()] + ["no-such-backend"]
    report = run_bench(names, ["kernels", "train", "generate"], TINY, batch=2, seq_len=8,
                       threads=1, repeats=1, vs_torch=False)
    by_backend = {r["backend"]: r for r in report["results"]}
    assert "not registered" in by_backend["no-such-backend"]["error"]
    for name in sllm.backends.available():
        res = by_backend[name]
        assert "error" not in res, res
        suites = {r["suite"] for r in res["rows"]}
        assert suites == {"kernels", "train", "generate"}
        for r in res["rows"]:
            assert r["median_s"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"]
        train = next(r for r in res["rows"] if r["suite"] == "train")
        assert train["tokens_per_s"] > 0 and train["gflops"] > 0
        decode = next(r for r in res["rows"] if r["suite"] == "generate")
        assert decode["weights_gb_per_s"] > 0  # the weights it reads, for "% of BW"
        quantized = [r for r in res["rows"] if r["suite"] == "generate" and "f32_row" in r]
        assert [r["name"].rsplit(", ", 1)[1] for r in quantized] == ["q8_0", "q4_0", "q4_1"]
        for r in quantized:  # the float row's median over this one's
            f32 = next(f for f in res["rows"] if f["name"] == r["f32_row"])
            assert r["vs_f32"] == pytest.approx(f32["median_s"] / r["median_s"])
        loop = next(r for r in res["rows"] if r["name"].startswith("train loop"))
        # the loop's wall time = its steps (metrics.jsonl) + evaluations and checkpoint
        steps_s = loop["median_s"] - loop["fixed_s"]
        assert 0 < steps_s < loop["median_s"] and loop["steps_vs_step"] > 0
        assert res["peak_rss_mb"] > 0 and res["analytic_mb"] > 0
    numpy_train = next(r for r in by_backend["numpy"]["rows"] if r["suite"] == "train")
    assert numpy_train["vs_numpy"] == pytest.approx(1.0)
    path = tmp_path / "bench.json"
    write_json(report, str(path))
    assert json.loads(path.read_text())["results"]
    console = Console(record=True, width=160)
    render(report, console)
    text = console.export_text()
    assert "train" in text and "numpy" in text and "FP32 peak" in text
    assert "its steps, timed inside the loop, ran at" in text


def _report_of(rows):
    return {"results": [{"backend": b, "rows": rs, "peak_rss_mb": 80.0} for b, rs in rows.items()],
            "batch": 16, "seq_len": 128, "peak_gflops": 225.0, "peak_note": "measured",
            "bandwidth_gbps": 33.0, "bandwidth_note": "measured"}


def test_tables_fit_100_columns_and_wide_shows_all():
    """The default tables fit 100 columns and say what their ratios mean; --wide has every
    column, including the spread the narrow table drops."""
    row = {"suite": "kernels", "name": "attention_decode_batch 16 sequences maxT64 H1",
           "median_s": 1e-5, "min_s": 9e-6, "max_s": 2e-5, "rows_per_s": 1_234_567.0,
           "gflops": 12.5, "vs_numpy": 19.76, "vs_torch": 1.5, "mfu": 0.1}
    decode = {"suite": "generate", "name": "decode 48 tokens, batch 1, q4_1", "median_s": 0.002,
              "min_s": 0.002, "max_s": 0.003, "tokens_per_s": 22_031.0, "bw": 4.17,
              "vs_numpy": 19.47, "vs_torch": None, "mfu": 0.01, "vs_f32": 1.37}
    report = _report_of({"cpp": [row, decode], "numpy": [dict(row, vs_numpy=1.0)]})
    narrow = Console(record=True, width=100)
    render(report, narrow)
    text = narrow.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "0.01..0.02" not in text and "1.2M rows/s" in text and "417%" in text
    assert "vs f32" in text and "1.37x" in text
    flat = " ".join(text.split())  # the footer wraps at 100 columns
    assert "above 1.00x is faster" in flat and "above 100% the data came from cache" in flat
    wide = Console(record=True, width=200)
    render(report, wide, wide=True)
    text = wide.export_text()
    assert "0.01..0.02" in text and "1,234,567 rows/s" in text and "12.5" in text


def test_bench_cli(tmp_path):
    from typer.testing import CliRunner

    from sllm.cli import app
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", "--backends", "numpy", "--suite", "train",
                                      "--config", str(config), "--batch-size", "2",
                                      "--seq-len", "8", "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["results"][0]["rows"][0]["tokens_per_s"] > 0
    assert "FP32 peak" in result.output
    bad = CliRunner().invoke(app, ["bench", "--suite", "nope", "--config", str(config)])
    assert bad.exit_code == 1 and "unknown suite" in bad.output
    for option in ("--batch-size", "--seq-len", "--repeats", "--threads"):
        bad = CliRunner().invoke(app, ["bench", "--config", str(config), option, "0"])
        assert bad.exit_code == 1 and option in bad.output and "must be" in bad.output, option


def test_peak_is_measured_when_cpp_is_available():
    from sllm.bench import peak_gflops
    peak, note = peak_gflops()
    if "cpp" in sllm.backends.available():
        assert peak > 1 and "FMA" in note
    else:
        assert peak is None and "unknown" in note


def test_kernel_suite_covers_every_kernel_and_headings_match_rows(tmp_path):
    """Every kernel of the contract has a row (a plugin speeding up GELU sees its figure),
    and the headings state the B and T the rows really used (T capped by max_seq_len)."""
    from sllm.backends import KERNELS
    report = run_bench(["numpy"], ["kernels", "train"], TINY, batch=2, seq_len=64,
                       threads=1, repeats=1, vs_torch=False)
    rows = report["results"][0]["rows"]
    kernels = {r["name"].split()[0] for r in rows if r["suite"] == "kernels"}
    assert set(KERNELS) <= kernels
    train = next(r for r in rows if r["suite"] == "train")
    assert train["name"] == "step B2 T16"  # max_seq_len 16 caps the asked-for T=64
    console = Console(record=True, width=200)
    render(report, console)
    text = console.export_text()
    assert "B=2, T=16" in text and "T=64" not in text


def test_every_benchmark_times_one_step_definition():
    """sllm bench and the scripts in bench/ time sllm.bench.train_step, nothing else."""
    from pathlib import Path
    bench_dir = Path(__file__).resolve().parent.parent / "bench"
    for script in ("cpp_train.py", "train_backends.py", "test_phases.py", "wasm_step.py",
                   "step_profile.py"):
        text = (bench_dir / script).read_text()
        assert "train_step(model, opt" in text and "model.forward_backward" not in text, script


def test_decode_weight_bytes_counts_what_a_token_reads():
    """Every parameter but the embedding tables (one row each), unless wte is also the
    output projection; quantized weights as stored."""
    from sllm.bench import decode_weight_bytes
    for tied in (True, False):
        model = sllm.SLLM({**TINY, "tieEmbeddings": tied}, backend="numpy")
        skip = {"wpe"} | (set() if tied else {"wte"})
        params = model.parameters()
        assert decode_weight_bytes(model) == sum(p.nbytes for n, p in params.items()
                                                 if n not in skip)
        q = model.quantize("q8_0").quantized_weights()
        floats = model.parameters()
        assert q and not set(q) & set(floats)
        assert decode_weight_bytes(model) == sum(
            p.nbytes for n, p in floats.items() if n not in skip) + sum(
            t.data.nbytes for n, t in q.items() if n not in skip)
