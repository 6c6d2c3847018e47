"""Property: `sllm train` given any options of any type or value either trains or exits
with an error message (exit 1) or a usage error (exit 2) — never a traceback.

Options that make a valid run expensive (steps, batch size, evaluation batches, epochs)
draw valid values only from small ranges; every option may also draw values of the wrong
type, out of range, NaN, infinities and huge integers. A time budget (--max-minutes)
bounds each run."""
import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sllm.cli import app

runner = CliRunner()
TINY = {"vocabSize": 60, "embeddingDim": 8, "numLayers": 1, "numHeads": 2,
        "ffnHiddenDim": 16, "dropout": 0.0, "maxSeqLen": 16}
CORPUS = "the cat sat on the mat . the dog ate the bone . a bird sang .\n" * 60
WORDS = ["1e-3", "four", "", "nan", "inf", "-inf", "-0", "0.9,0.99", "1.5,0.99", "0.9",
         "0.9,1.0", "word", "char", "bpe", "adam", "adamw", "sgd", "lion", "cosine",
         "constant", "numpy", "wasm", "cpp", "8G", "1K", "strict", "replace", "true", "[1]"]

wrong = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.integers(-2**70, -1).map(str), st.integers(2**31, 2**70).map(str),
                  st.sampled_from(WORDS), st.text(max_size=6))


def cheap_int(hi: int) -> st.SearchStrategy[str]:
    """A small valid count, or anything wrong."""
    return st.one_of(st.integers(0, hi).map(str), wrong)


def any_int() -> st.SearchStrategy[str]:
    return st.one_of(st.integers(-10, 2**31).map(str), wrong)


def any_float() -> st.SearchStrategy[str]:
    return st.one_of(st.floats(-2.0, 2.0).map(repr), st.floats(0, 1e-2).map(repr), wrong)


OPTIONS = {
    "--steps": cheap_int(3), "--batch-size": cheap_int(4), "--eval-batches": cheap_int(3),
    "--epochs": st.one_of(st.floats(0, 0.05).map(repr), wrong),
    "--seq-len": any_int(), "--vocab-size": cheap_int(200), "--warmup": any_int(),
    "--eval-every": any_int(), "--patience": any_int(), "--checkpoint-every": any_int(),
    "--log-every": any_int(), "--seed": any_int(), "--lr": any_float(),
    "--min-lr": any_float(), "--momentum": any_float(), "--weight-decay": any_float(),
    "--grad-clip": any_float(), "--val-fraction": any_float(), "--min-delta": any_float(),
    "--dropout": any_float(), "--tokenizer": st.one_of(st.sampled_from(["word", "char", "bpe"]),
                                                       wrong),
    "--optimizer": st.sampled_from(WORDS), "--schedule": st.sampled_from(WORDS),
    "--encoding-errors": st.sampled_from(WORDS), "--backend": st.sampled_from(WORDS),
    "--betas": st.sampled_from(WORDS), "--max-memory": st.one_of(st.sampled_from(WORDS), wrong),
}
FLAGS = ["--documents", "--windows", "--overwrite"]


@st.composite
def train_args(draw):
    names = draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=6, unique=True))
    args = []
    for name in names:
        args += [name, draw(OPTIONS[name])]
    return args + draw(st.lists(st.sampled_from(FLAGS), max_size=1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=train_args())
def test_train_options_give_success_or_one_error_never_a_traceback(args):
    work = Path(tempfile.mkdtemp(prefix="sllm-prop-"))
    try:
        (work / "m.json").write_text(json.dumps(TINY))
        (work / "c.txt").write_text(CORPUS)
        fixed = ["--config", str(work / "m.json"), "--corpus", str(work / "c.txt"),
                 "--out", str(work / "run"), "--max-minutes", "0.005", "--quiet"]
        result = runner.invoke(app, ["train", *args, *fixed])
        out = result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            (args, repr(result.exception))
        assert "Traceback" not in out, (args, out)
        assert result.exit_code in (0, 1, 2), (args, result.exit_code, out)
        if result.exit_code == 1:
            errors = [line for line in out.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1, (args, out)
        if result.exit_code == 0:
            assert (work / "run" / "checkpoint.sllm").exists(), (args, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


json_wrong = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                       st.floats(allow_nan=False), st.text(max_size=5),
                       st.lists(st.floats(-2, 2), max_size=3), st.just({"a": 1}))
CHEAP = {"steps": st.integers(1, 3), "batch_size": st.integers(1, 4),
         "eval_batches": st.integers(1, 3), "epochs": st.floats(1e-3, 0.05),
         "demo_chars": st.integers(1, 5000)}
FIELDS = ["vocab_size", "seq_len", "lr", "min_lr", "betas", "momentum", "weight_decay",
          "warmup", "grad_clip", "val_fraction", "eval_every", "patience", "min_delta",
          "checkpoint_every", "log_every", "seed", "dropout", "optimizer", "schedule",
          "tokenizer", "encoding_errors", "documents", "backend", "max_memory", *CHEAP]


@st.composite
def train_config(draw):
    names = draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True))
    return {n: draw(st.one_of(CHEAP[n], json_wrong) if n in CHEAP
                    else st.one_of(json_wrong, st.sampled_from(WORDS))) for n in names}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=train_config())
def test_train_config_values_give_success_or_one_error(config):
    work = Path(tempfile.mkdtemp(prefix="sllm-prop-"))
    try:
        (work / "m.json").write_text(json.dumps(TINY))
        (work / "c.txt").write_text(CORPUS)
        (work / "t.json").write_text(json.dumps(config))
        result = runner.invoke(app, ["train", "--train-config", str(work / "t.json"),
                                     "--config", str(work / "m.json"), "--corpus",
                                     str(work / "c.txt"), "--out", str(work / "run"),
                                     "--max-minutes", "0.005", "--quiet"])
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            (config, repr(result.exception))
        assert result.exit_code in (0, 1), (config, result.output)
        assert "Traceback" not in result.output
    finally:
        shutil.rmtree(work, ignore_errors=True)
