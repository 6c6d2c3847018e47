"""The examples run end to end (tiny sizes): the demo pipeline and the SGD-vs-Adam plot."""
import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_smoke(tmp_path, capsys):
    _load("demo").main(["--smoke", "--out", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert "done: 30 steps" in out and "--- generations ---" in out
    assert out.count("\nA: ") >= 3 and out.count("\nB: ") >= 3
    assert (tmp_path / "demo" / "model.sllm").exists()


def test_sgd_vs_adam_smoke(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")  # a directory the user named: kept
    for _ in range(2):  # a rerun replaces the example's own runs
        _load("sgd_vs_adam").main(["--steps", "4", "--chars", "60000", "--out", str(out),
                                   "--backend", "numpy"])
    assert "SGD" in capsys.readouterr().out
    assert (out / "sgd-vs-adam.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "notes.txt").read_text() == "the user's"
    assert {p.name for p in out.iterdir()} == {"sgd", "adam", "sgd-vs-adam.png", "notes.txt"}
