"""Every bad value gets a clear error naming the option."""
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

import sllm
from sllm import generate as G
from sllm import optim
from sllm import tokenizer as tokenizers
from sllm.cli import app
from sllm.train_config import TrainConfig

runner = CliRunner()
TINY = {"vocabSize": 40, "embeddingDim": 16, "numLayers": 1, "numHeads": 2,
        "ffnHiddenDim": 32, "dropout": 0.0, "maxSeqLen": 16}
TEXT = "the cat sat on the mat and the dog sat on the log . " * 40


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert not (result.exception and not isinstance(result.exception, SystemExit)), \
        result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("val")
    tok = tokenizers.WordTokenizer.train(TEXT, 40, byte_fallback=False)
    model = sllm.SLLM({**TINY, "vocabSize": tok.vocab_size}, backend="numpy")
    model.tokenizer = tok.to_dict()
    model.save(d / "m.sllm")
    tok.save(d / "vocab.json")
    return d


# ---- the training config: --train-config, TrainConfig(...), flags -------------------------
@pytest.mark.parametrize("given, match", [
    ({"lr": "1e-3"}, r"lr \(--lr\) must be a finite number in \[0, inf\], got '1e-3' \(a str\)"),
    ({"batch_size": "four"}, r"batch_size \(--batch-size\) must be an integer in \[1, "),
    ({"betas": [0.9]}, r"betas \(--betas\) must be two numbers b1,b2 each in \[0, 1\)"),
    ({"betas": [1.5, 0.99]}, r"betas \(--betas\) must be a finite number in \[0, 1\), got 1.5"),
    ({"betas": [0.9, 1.0]}, r"betas .* got 1.0"),
    ({"steps": 5.5}, r"steps \(--steps\) must be an integer in \[1, .*got 5.5"),
    ({"steps": True}, r"steps \(--steps\) must be an integer .*got True \(a bool\)"),
    ({"momentum": -1}, r"momentum \(--momentum\) must be a finite number in \[0, 1\)"),
    ({"lr": math.inf}, r"lr \(--lr\) must be a finite number .* got inf"),
    ({"lr": math.nan}, r"lr \(--lr\) .* got nan"),
    ({"seed": -1}, r"seed \(--seed\) must be an integer in \[0, "),
    ({"optimizer": "lion"}, r"optimizer \(--optimizer\) must be one of adam, adamw, sgd"),
    ({"schedule": 3}, r"schedule \(--schedule\) must be one of"),
    ({"dropout": 1.0}, r"dropout \(--dropout\) must be a finite number in \[0, 1\)"),
    ({"documents": "yes"}, r"documents \(--documents\) must be true or false"),
    ({"max_memory": "lots"}, r"max_memory \(--max-memory\) must be a size"),
    ({"out": ""}, r"out \(--out\) must be a non-empty string"),
    ({"model": 5}, r"model \(--model\) must be a non-empty string"),
])
def test_bad_training_values_name_the_option(given, match):
    with pytest.raises(sllm.ConfigError, match=match):
        TrainConfig.from_dict(given)


def test_integral_floats_are_counts():
    assert TrainConfig.from_dict({"steps": 1e3}).steps == 1000


def test_bad_train_config_file_through_the_cli(tmp_path):
    for given in ({"lr": "1e-3"}, {"batch_size": "four"}, {"betas": [0.9]}, {"steps": 5.5},
                  {"steps": True}):
        path = tmp_path / "t.json"
        path.write_text(json.dumps(given))
        code, out = run("train", "--train-config", path, "--out", tmp_path / "r",
                        "--demo-chars", 5000, "-q")
        assert code == 1 and out.startswith("error: ") and len(out.splitlines()) == 1, out
        assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, match", [
    (["--betas", "1.5,0.99"], "betas (--betas)"), (["--betas", "0.9,1.0"], "betas (--betas)"),
    (["--momentum", "-1"], "momentum (--momentum)"), (["--lr", "inf"], "lr (--lr)"),
    (["--seed", "-1"], "seed (--seed)"), (["--max-memory", "x"], "max_memory (--max-memory)"),
])
def test_bad_train_flags(tmp_path, args, match):
    (tmp_path / "m.json").write_text(json.dumps(TINY))
    small = ["--config", tmp_path / "m.json", "--steps", 2, "--demo-chars", 5000, "-q"]
    code, out = run("train", *args, *small, "--out", tmp_path / "r")  # small, if accepted
    assert code == 1 and match in out, out


def test_optimizers_check_their_arguments():
    model = sllm.SLLM({**TINY}, backend="numpy")
    for make, match in [(lambda: optim.Adam(model, betas=(1.5, 0.99)), "betas"),
                        (lambda: optim.AdamW(model, lr=math.inf), "lr"),
                        (lambda: optim.SGD(model, 0.1, momentum=-1), "momentum"),
                        (lambda: optim.Adam(model, eps=0), "eps")]:
        with pytest.raises(sllm.ConfigError, match=match):
            make()


# ---- generation ---------------------------------------------------------------------------
@pytest.mark.parametrize("option, value", [
    ("--temperature", "-1"), ("--temperature", "nan"), ("--top-p", "0"), ("--top-p", "2"),
    ("--top-p", "-1"), ("--top-p", "nan"), ("--top-k", "-5"), ("--top-k", "0"),
    ("--max-tokens", "-1"), ("--seed", "-1"),
])
def test_bad_sampling_values_name_the_option(model_file, option, value):
    for command in ("generate", "chat"):
        code, out = run(command, model_file / "m.sllm", option, value)
        assert code == 1 and f"({option})" in out and len(out.splitlines()) == 1, out


def test_sampling_checked_in_the_python_api():
    model = sllm.SLLM({**TINY}, backend="numpy")
    with pytest.raises(sllm.ConfigError, match=r"top_p \(--top-p\)"):
        model.generate([1, 2], 3, top_p=2.0)
    with pytest.raises(sllm.ConfigError, match=r"temperature"):
        G.stream(model, [1], 3, temperature=math.nan)  # checked at the call, not at next()
    assert len(model.generate([1, 2], 0)) == 2


# ---- files --------------------------------------------------------------------------------
def test_corrupt_bpe_section_is_a_clear_error(tmp_path, model_file):
    tok = tokenizers.BPETokenizer.train(TEXT * 3, 300)
    d = tok.to_dict()
    d["hf"]["model"]["merges"] = "not a list"
    (tmp_path / "bpe.json").write_text(json.dumps(d))
    code, out = run("vocab", "encode", tmp_path / "bpe.json", "the cat")
    assert code == 1 and "corrupt bpe tokenizer" in out and len(out.splitlines()) == 1, out
    model = sllm.load(model_file / "m.sllm")
    model.tokenizer = d
    model.save(tmp_path / "bpe.sllm")
    code, out = run("generate", tmp_path / "bpe.sllm", "--max-tokens", 2)
    assert code == 1 and "corrupt bpe tokenizer" in out, out


@pytest.mark.parametrize("field, value, match", [
    ("metadata", [1, 2], "'metadata' must be an object"),
    ("vocab", 5, "'vocab' must be null or a tokenizer object")])
def test_convert_refuses_bad_json_models(tmp_path, model_file, field, value, match):
    sllm.load(model_file / "m.sllm").save_json(tmp_path / "m.json")
    doc = json.loads((tmp_path / "m.json").read_text())
    doc[field] = value
    (tmp_path / "m.json").write_text(json.dumps(doc))
    code, out = run("convert", tmp_path / "m.json", tmp_path / "out.sllm")
    assert code == 1 and match in out, out
    assert not (tmp_path / "out.sllm").exists()


def test_directories_are_not_models(tmp_path):
    with pytest.raises(sllm.ConfigError, match="is a directory"):
        sllm.SLLM(str(tmp_path))
    with pytest.raises(sllm.FormatError, match="is a directory"):
        sllm.load_json(tmp_path)
    with pytest.raises(sllm.FormatError, match="is a directory"):
        sllm.load(tmp_path)
    with pytest.raises(tokenizers.DataError, match="is a directory"):
        tokenizers.load(tmp_path)


def test_f16_save_refuses_values_beyond_its_range(tmp_path):
    model = sllm.SLLM({**TINY}, backend="numpy")
    model.parameters()["wte"][3, 4] = 70000.0
    with pytest.raises(ValueError, match=r"tensor 'wte' holds a value of magnitude 70000.*f32"):
        model.save(tmp_path / "m.sllm", dtype="f16")
    assert not (tmp_path / "m.sllm").exists()
    model.save(tmp_path / "m.sllm")  # f32 keeps it
    assert sllm.load(tmp_path / "m.sllm").parameters()["wte"][3, 4] == 70000.0
    model.parameters()["wte"][3, 4] = 65504.0  # f16's largest finite value is fine
    model.save(tmp_path / "h.sllm", dtype="f16")
    assert np.isfinite(sllm.load(tmp_path / "h.sllm").parameters()["wte"]).all()


def test_bench_fails_when_a_requested_backend_fails():
    code, out = run("bench", "--backends", "no-such-backend", "--suite", "kernels",
                    "--repeats", 1)
    assert code == 1 and "benchmark failed for no-such-backend" in out, out


def test_demo_says_how_to_run_sllm():
    import importlib.util
    import os
    import sys
    spec = importlib.util.spec_from_file_location("demo", os.path.join(
        os.path.dirname(__file__), "..", "examples", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    command = demo.sllm_command()
    expected = os.path.join(os.path.dirname(sys.executable), "sllm")
    assert command == "sllm" or os.path.samefile(command, expected)


def test_model_seed_is_checked():
    with pytest.raises(sllm.ConfigError, match=r"seed \(--seed\) must be an integer in \[0, "):
        sllm.SLLM({**TINY}, backend="numpy", seed=-1)


def test_unknown_settings_in_the_python_api():
    with pytest.raises(sllm.ConfigError, match=r"unknown setting\(s\) \['stepz'\]"):
        TrainConfig().replace(stepz=3)
