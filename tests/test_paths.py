"""Arguments that name files work from any directory: shipped configs by name (package
data, one copy), run directories wherever a model is taken, `sllm --version`."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sllm
from sllm.cli import app
from sllm.errors import ConfigError, SLLMError
from sllm.paths import CONFIG_DIR, config_file, model_file, shipped_configs

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_the_contract_configs_ship_inside_the_package():
    names = shipped_configs()
    assert {"small-model", "medium-model", "large-model", "seed-baseline"} <= set(names)
    assert all(p.parent == CONFIG_DIR for p in names.values())


def test_the_repository_configs_are_the_package_files():
    """configs/ at the root is the package's folder itself, not a copy that can drift."""
    root = REPO / "configs"
    if root.exists():
        assert root.resolve() == CONFIG_DIR


def test_a_config_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = sllm.ModelConfig.from_json("small-model")
    assert by_name == sllm.ModelConfig.from_json(CONFIG_DIR / "small-model.json")
    assert sllm.ModelConfig.from_json("small-model.json") == by_name
    assert sllm.SLLM("seed-baseline", backend="numpy").config.vocab_size == 400


def test_a_file_in_the_working_directory_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = {"vocabSize": 11, "embeddingDim": 8, "numLayers": 1, "numHeads": 1,
            "ffnHiddenDim": 8, "dropout": 0.0, "maxSeqLen": 8}
    (tmp_path / "small-model.json").write_text(json.dumps(mine))
    assert sllm.ModelConfig.from_json("small-model.json").vocab_size == 11


def test_an_unknown_config_names_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="shipped configs, usable by name: .*small-model"):
        config_file("no-such-model")
    with pytest.raises(ConfigError, match="config file not found: sub/small-model.json"):
        sllm.ModelConfig.from_json("sub/small-model.json")  # a path is a path, never a name


def test_model_file_takes_a_file_or_a_run_directory(tmp_path):
    with pytest.raises(SLLMError, match="no model.sllm, best.sllm or checkpoint.sllm"):
        model_file(tmp_path)
    with pytest.raises(SLLMError, match="no such model file or run directory"):
        model_file(tmp_path / "missing.sllm")
    (tmp_path / "checkpoint.sllm").write_bytes(b"x")
    assert model_file(tmp_path) == tmp_path / "checkpoint.sllm"
    (tmp_path / "model.sllm").write_bytes(b"x")
    assert model_file(tmp_path) == tmp_path / "model.sllm"


def test_train_by_name_then_init_from_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = ["--demo-chars", 20_000, "--batch-size", 2, "--seq-len", 16, "--backend", "numpy",
             "--eval-every", 0, "-q"]
    code, out = run("train", "--config", "seed-baseline", "--steps", 3, "--out", "base", *small)
    assert code == 0, out
    code, out = run("train", "--init-from", "base", "--steps", 2, "--out", "tuned", *small)
    assert code == 0, out
    tuned = sllm.load(tmp_path / "tuned" / "model.sllm")
    assert tuned.config == sllm.load(tmp_path / "base" / "model.sllm").config
    assert tuned.metadata["init_from"] == "base"
    code, out = run("train", "--init-from", "nowhere", "--steps", 2, "--out", "x", *small)
    assert code == 1 and "--init-from nowhere: no such model file or run directory" in out


def test_bench_from_a_directory_without_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run("bench", "--backends", "numpy", "--suite", "generate", "--config",
                    "seed-baseline", "--batch-size", 1, "--seq-len", 8, "--repeats", 1)
    assert code == 0, out
    assert "numpy" in out


def test_version():
    code, out = run("--version")
    assert code == 0 and out.strip() == f"sllm {sllm.__version__}"
