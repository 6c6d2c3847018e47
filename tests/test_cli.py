"""End to end through the `sllm` command line: train, resume, generate, chat, vocab, plot."""
import json

import pytest
from typer.testing import CliRunner

from sllm.cli import app
from sllm.corpus import write_corpus

runner = CliRunner()
TINY = {"vocabSize": 500, "embeddingDim": 32, "numLayers": 2, "numHeads": 2,
        "ffnHiddenDim": 64, "dropout": 0.0, "maxSeqLen": 32}


def run(*args, input=None):
    result = runner.invoke(app, [str(a) for a in args], input=input)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for 100 steps through the CLI, then resumed to 120 (without
    byte fallback, so that unknown words meet the [UNK] warnings)."""
    d = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(d / "corpus.txt", 60_000, seed=1)
    (d / "model.json").write_text(json.dumps(TINY))
    code, out = run("train", "--config", d / "model.json", "--corpus", corpus,
                    "--vocab-size", 400, "--no-byte-fallback", "--steps", 100, "--batch-size", 8, "--seq-len", 32,
                    "--lr", 3e-3, "--eval-every", 50, "--eval-batches", 4, "--log-every", 10,
                    "--checkpoint-every", 50, "--out", d / "run", "--backend", "numpy", "-q")
    assert code == 0, out
    first = [json.loads(x) for x in (d / "run" / "metrics.jsonl").read_text().splitlines()]
    code, resumed = run("train", "--resume", d / "run", "--steps", 120, "-q")
    assert code == 0, resumed
    return d, out, first, resumed


def test_train_reports_and_val_loss_falls(trained):
    d, out, first, _ = trained
    assert "says vocab_size 500; using the tokenizer's 400" in out
    assert "done: step 100" in out
    vals = [r["val_loss"] for r in first if "val_loss" in r]
    assert len(vals) == 2 and vals[1] < vals[0]


def test_resume_continues(trained):
    d, _, _, resumed = trained
    assert "resuming" in resumed and "at step 100 of 120" in resumed
    steps = [json.loads(x)["step"] for x in (d / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 120 and steps == sorted(steps)


def test_generate_streams_text(trained):
    d = trained[0]
    code, out = run("generate", d / "run", "--prompt", "Once upon a time", "--max-tokens", 20,
                    "--seed", 1, "--backend", "numpy")
    assert code == 0, out
    assert out.startswith("Once upon a time") and len(out.split()) > 6
    code2, out2 = run("generate", d / "run" / "model.sllm", "--prompt", "Once upon a time",
                      "--max-tokens", 20, "--seed", 1)
    assert out2 == out


def test_generate_warns_on_unknown_words(trained):
    code, out = run("generate", trained[0] / "run", "--prompt", "Xylophones quaver",
                    "--max-tokens", 3)
    assert code == 0 and "encoded as [UNK]: 'Xylophones', 'quaver'" in out


def test_chat_with_piped_input(trained):
    code, out = run("chat", trained[0] / "run", "--seed", 0, "--max-tokens", 12,
                    input="Hello! How are you?\nWhat do you like to eat?\n/quit\nignored\n")
    assert code == 0, out
    assert "warning: not in the vocabulary, encoded as [UNK]: 'Hello'\nB: " in out
    lines = [x for x in out.strip().splitlines() if not x.startswith("warning:")]
    assert len(lines) == 4
    assert lines[0] == "A: Hello! How are you?" and lines[1].startswith("B: ")
    assert lines[2] == "A: What do you like to eat?" and lines[3].startswith("B: ")


def test_generate_with_a_grammar_and_sampling_controls(trained, tmp_path):
    run_dir = trained[0] / "run"
    code, out = run("generate", run_dir, "--prompt", "Once upon a time", "--max-tokens", 6,
                    "--seed", 1, "--choice", "she sat down", "--choice", "he ran away")
    assert code == 0, out
    assert out.rstrip("\n") in ("Once upon a time she sat down", "Once upon a time he ran away")
    code, out = run("generate", run_dir, "--prompt", "The", "--max-tokens", 5, "--seed", 2,
                    "--frequency-penalty", 1.5, "--min-p", 0.1, "--logit-bias", "5=-100")
    assert code == 0, out
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "thing"}')
    code, out = run("generate", run_dir, "--json-schema", bad, "--max-tokens", 5)
    assert code != 0 and "type 'thing' is not one of" in out
    code, out = run("generate", run_dir, "--logit-bias", "x", "--max-tokens", 5)
    assert code != 0 and "--logit-bias takes TOKEN_ID=BIAS" in out
    code, out = run("generate", run_dir, "--json-schema", tmp_path / "missing.json")
    assert code != 0 and "--json-schema" in out


def test_chat_context_overflow(trained):
    long_line = "the cat sat on the mat " * 12  # more than the 32-token context alone
    code, out = run("chat", trained[0] / "run", "--seed", 0, "--max-tokens", 4,
                    input=f"{long_line}\nhello\n")
    assert code == 0, out
    assert "(not sent: this line alone takes" in out and out.count("B: ") == 1
    turns = "".join(f"the cat sat on the mat {i}\n" for i in range(6))
    code, out = run("chat", trained[0] / "run", "--seed", 0, "--max-tokens", 4,
                    "--context-overflow", "error", input=turns)
    assert code == 0 and "(not sent: the dialogue takes" in out
    code, out = run("chat", trained[0] / "run", "--context-overflow", "drop", input="")
    assert code != 0 and "--context-overflow must be trim or error" in out


def test_vocab_build_and_encode(tmp_path, trained):
    corpus = trained[0] / "corpus.txt"
    code, out = run("vocab", "build", corpus, "--kind", "bpe", "--size", 300, "-o",
                    tmp_path / "v.json")
    assert code == 0 and "bpe vocabulary of 300 tokens" in out
    code, out = run("vocab", "encode", tmp_path / "v.json", "日本語 hello")
    assert code == 0 and "decoded: 日本語 hello" in out


def test_backends_and_plot(tmp_path, trained):
    code, out = run("backends")
    assert code == 0 and "numpy" in out and "auto picks:" in out
    pytest.importorskip("matplotlib")
    code, out = run("plot", trained[0] / "run", "-o", tmp_path / "c.png")
    assert code == 0 and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n" * 50 + b"\xc3\x28 broken")
    code, out = run("train", "--corpus", bad, "--out", tmp_path / "r1", "-q")
    assert code == 1 and "bad.txt: not valid UTF-8 at byte offset 500" in out
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    code, out = run("train", "--corpus", empty, "--out", tmp_path / "r2", "-q")
    assert code == 1 and "corpus is empty" in out
    short = tmp_path / "short.txt"
    short.write_text("A: hi there.\n")
    code, out = run("train", "--corpus", short, "--seq-len", 64, "--out", tmp_path / "r3", "-q")
    assert code == 1 and "fewer than seq_len + 1" in out
    code, out = run("train", "--resume", tmp_path / "nothing", "-q")
    assert code == 1 and "no such run directory" in out
    code, out = run("generate", tmp_path, "--prompt", "hi")
    assert code == 1 and "no model.sllm" in out
    code, out = run("train", "--betas", "0.9", "-q")
    assert code != 0 and "--betas must look like" in out


def test_help_shows_square_brackets():
    """Help texts are rich markup, where `[mpi]` is a tag and vanishes unless escaped."""
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "needs sllm[mpi])" in result.output


def test_error_messages_keep_square_brackets(tmp_path):
    """An error is printed as text, not markup: 'sllm[serve]' or a path with [x] intact."""
    missing = tmp_path / "[abc]" / "m.sllm"
    result = runner.invoke(app, ["info", str(missing)])
    assert result.exit_code == 1 and f"{missing}: no such model file or run directory" in result.output


def test_docs_lists_and_prints_pages_without_test_markers():
    listing = runner.invoke(app, ["docs"])
    assert listing.exit_code == 0 and "api" in listing.output and "plugins" in listing.output
    page = runner.invoke(app, ["docs", "quantization"])
    assert page.exit_code == 0 and "quant.quantize(x, \"q4_0\")" in page.output
    assert "doc-test" not in page.output  # tests/test_docs.py's markers are not for readers
    missing = runner.invoke(app, ["docs", "nope"])
    assert missing.exit_code == 1 and "no documentation page 'nope'" in missing.output
