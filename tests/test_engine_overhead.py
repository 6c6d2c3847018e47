"""bench/engine_overhead.py runs, against an older revision too, and both send the same
text (its timings are printed, never checked)."""
import subprocess
import sys
from pathlib import Path

import pytest

import sllm

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model", [[], ["--logprobs", "2"], ["--model", "small-model"]],
                         ids=["stand-in", "logprobs", "real"])
def test_engine_overhead_bench_runs_and_both_revisions_agree(model):
    if "--model" in model and "cpp" not in sllm.backends.available():
        pytest.skip("the real model runs on the cpp backend")
    out = subprocess.run([sys.executable, "bench/engine_overhead.py", "--rounds", "1",
                          "--against", "HEAD", *model], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    rows = [line for line in out.splitlines() if "us a step" in line]
    assert len(rows) == 4 and out.rstrip().endswith("same text: True")
