"""Limits at the entry points (issue 29, items 5, 7, 8 and 9 of "Why"): the server's stop
strings, JSON nesting, --port and --host, a subnormal temperature; eval --max-tokens -5,
--eval-batches 10^9, --resume --steps behind the checkpoint, bpe --vocab-size 10^9."""
from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import sllm
from sllm import tokenizer as tokenizers
from sllm.cli import app
from sllm.corpus import generate_corpus
from sllm.serve_api import MAX_STOP_CHARS

sys.path.insert(0, str(Path(__file__).parent))
from serving import ThreadServer

TEXT = generate_corpus(8_000, seed=3)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    tok = tokenizers.WordTokenizer.train(TEXT, 100, byte_fallback=False)
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=16, num_layers=1,
                           num_heads=2, ffn_hidden_dim=32, dropout=0.0, max_seq_len=32)
    m = sllm.SLLM(cfg, backend="numpy", seed=1)
    m.tokenizer = tok.to_dict()
    root = tmp_path_factory.mktemp("limits")
    m.save(root / "tiny.sllm")
    (root / "corpus.txt").write_text(TEXT)
    return root / "tiny.sllm"


@pytest.fixture(scope="module")
def srv(model_path):
    server = ThreadServer(model_path)
    yield server
    server.stop()


def _post(srv, body, **kw):
    return httpx.post(srv.url + "/v1/completions", timeout=30, **kw,
                      **({"json": body} if not isinstance(body, bytes) else
                         {"content": body, "headers": {"content-type": "application/json"}}))


def test_stop_strings_are_bounded(srv):
    ok = _post(srv, {"model": "tiny", "prompt": "the", "max_tokens": 4,
                     "stop": ["x" * MAX_STOP_CHARS]})
    assert ok.status_code == 200
    for stop in (["x" * 250_000], ["a", "b", "c", "d", "e"]):
        r = _post(srv, {"model": "tiny", "prompt": "the", "max_tokens": 4, "stop": stop})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    r = _post(srv, {"model": "tiny", "prompt": "the", "max_tokens": 4, "stop": ["a"] * 100})
    assert "got 100" in r.json()["error"]["message"] and "'a', 'a'" not in r.text  # the count


def test_deeply_nested_json_is_400_and_the_server_lives(srv):
    r = _post(srv, b"[" * 200_000 + b"]" * 200_000)
    assert r.status_code == 400, r.text
    assert httpx.get(srv.url + "/health").status_code == 200


@pytest.mark.parametrize("temperature", [5e-324, 1e-310, 1e-300])
def test_a_subnormal_temperature_is_answered(srv, temperature):
    r = _post(srv, {"model": "tiny", "prompt": "the", "max_tokens": 4,
                    "temperature": temperature})
    assert r.status_code == 200, r.text
    greedy = _post(srv, {"model": "tiny", "prompt": "the", "max_tokens": 4, "temperature": 0})
    assert r.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


@pytest.mark.parametrize("args,message", [
    (["--port", "70000"], "port"), (["--port", "-1"], "port"), (["--host", ""], "--host"),
    (["--host", "a b"], "--host")])
def test_serve_refuses_a_bad_port_or_host(model_path, args, message):
    result = CliRunner().invoke(app, ["serve", str(model_path), *args])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and "OverflowError" not in result.output


def test_eval_max_tokens_must_be_positive(model_path):
    corpus = model_path.parent / "corpus.txt"
    result = CliRunner().invoke(app, ["eval", str(model_path), "--corpus", str(corpus),
                                      "--max-tokens", "-5", "--backend", "numpy"])
    assert result.exit_code == 1 and "--max-tokens must be >= 1, got -5" in result.output


def test_bpe_vocab_size_of_a_billion_is_clamped_not_fatal():
    with pytest.warns(UserWarning, match="more than this corpus supports"):
        tok = tokenizers.BPETokenizer.train(TEXT[:2000], 1_000_000_000)
    assert tok.vocab_size < 3000


def test_resume_with_steps_behind_the_checkpoint_is_an_error(model_path, tmp_path):
    corpus = model_path.parent / "corpus.txt"
    run = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(app, ["train", "--corpus", str(corpus), "--steps", "4",
                                "--batch-size", "2", "--eval-every", "0", "--backend", "numpy",
                                "--config", "seed-baseline", "--seq-len", "8",
                                "--tokenizer", "char", "--out", str(run), "-q"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["train", "--resume", str(run), "--steps", "2", "-q"])
    assert again.exit_code == 1 and "at step 4" in again.output, again.output
    more = runner.invoke(app, ["train", "--resume", str(run), "--steps", "6", "-q"])
    assert more.exit_code == 0, more.output


def test_eval_batches_beyond_memory_names_the_option(model_path, tmp_path):
    corpus = model_path.parent / "corpus.txt"
    result = CliRunner().invoke(app, [
        "train", "--corpus", str(corpus), "--steps", "1", "--batch-size", "2",
        "--eval-batches", "1000000000", "--backend", "numpy", "--seq-len", "8",
        "--config", "seed-baseline", "--tokenizer", "char", "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 1 and "--eval-batches 1000000000" in result.output, result.output
    assert "largest --batch-size that fits is 0" not in result.output


class _Abort(BaseException):
    """What no step handler catches: it ends the engine's thread."""


@pytest.mark.parametrize("exit_with", [SystemExit(0), _Abort("gone")])
def test_a_kernel_that_exits_fails_requests_instead_of_hanging(model_path, exit_with):
    server = ThreadServer(model_path)
    try:
        def boom(*args, **kw):
            raise exit_with
        server.model.decode_batch = boom
        server.model.decode = boom
        r = _post(server, {"model": "tiny", "prompt": "the", "max_tokens": 3})
        assert r.status_code >= 500 and "failed" in r.text, r.text
        health = httpx.get(server.url + "/health", timeout=10)
        if isinstance(exit_with, SystemExit):  # handled per step: the engine lives on
            assert health.status_code == 200
        else:
            assert health.status_code == 503 and "engine stopped" in health.text
            again = _post(server, {"model": "tiny", "prompt": "the", "max_tokens": 3})
            assert again.status_code == 503 and "engine stopped" in again.text
    finally:
        server.stop()
