"""The server's per-request budget (issue 29, item 7 of "Why" and item 5 of "Deliver"):
stop strings matched in linear time (4 of 256 characters used to cost the square of their
length per token), a per-request deadline (`--request-timeout`) past which a waiting
request gets 504 and a generating one ends with finish_reason "length", and an engine that
hangs cannot make a client wait forever."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import sllm
from sllm import serve_generate
from sllm import tokenizer as tokenizers
from sllm.batching import TextStream
from sllm.cli import app
from sllm.corpus import generate_corpus
from sllm.serve_api import MAX_STOP, MAX_STOP_CHARS
from sllm.stops import StopMatcher

sys.path.insert(0, str(Path(__file__).parent))
from serving import ThreadServer

TEXT = generate_corpus(8_000, seed=3)
TOK = tokenizers.WordTokenizer.train(TEXT, 100, byte_fallback=False)


# ---- stop strings in linear time ---------------------------------------------------------
def _naive_first(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def test_four_longest_stop_strings_cost_linear_work():
    # The worst case for prefix-by-prefix matching: every character extends a long
    # partial match of every stop string, which then fails at its last character.
    stops = tuple("a" * (MAX_STOP_CHARS - 1) + c for c in "bcde")
    assert len(stops) == MAX_STOP
    matcher = StopMatcher(stops)
    chars = 0
    for _ in range(5_000):  # a long generation, a few characters per token
        hit, hold = matcher.feed("aaaa")
        chars += 4
        assert hit is None and hold == min(chars, MAX_STOP_CHARS - 1)
    assert matcher.steps <= 2 * len(stops) * chars  # the naive way: ~chars x 256 x 256 x 4
    hit, _ = matcher.feed("b")
    assert hit == 1 - MAX_STOP_CHARS  # the match began 255 characters before this piece


@settings(max_examples=300, deadline=None)
@given(st.text("abc", max_size=60), st.lists(st.text("abc", min_size=1, max_size=6),
                                              min_size=1, max_size=4),
       st.lists(st.integers(1, 7), min_size=1, max_size=60))
def test_stop_matcher_agrees_with_find(text, stops, cuts):
    """The same answer as searching the whole text so far after every piece (the old way)."""
    stops = tuple(stops)
    matcher, fed = StopMatcher(stops), 0
    for n in cuts * 10:
        piece = text[fed:fed + n]
        if not piece:
            break
        hit, hold = matcher.feed(piece)
        expected = _naive_first(text[:fed + len(piece)], stops)
        assert (None if hit is None else fed + hit) == expected
        if hit is not None:
            break
        fed += len(piece)
        # what is held back is exactly the longest end that begins some stop string
        ends = [k for s in stops for k in range(1, len(s)) if text[:fed].endswith(s[:k])]
        assert hold == max(ends, default=0)


def test_text_stream_keeps_only_the_held_back_text():
    tok = tokenizers.CharTokenizer.train("ab", byte_fallback=False)
    a = tok.encode("a")[0]
    ts = TextStream(tok, [a], ("a" * (MAX_STOP_CHARS - 1) + "b",))
    sent = sum(len(ts.push(a)[0]) for _ in range(3_000))
    assert len(ts.held) == MAX_STOP_CHARS - 1 and sent == 3_000 - len(ts.held)
    assert ts.flush() == "a" * (MAX_STOP_CHARS - 1) and ts.held == ""


# ---- the per-request deadline ---------------------------------------------------------------
@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    tok = TOK
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=16, num_layers=1,
                           num_heads=2, ffn_hidden_dim=32, dropout=0.0, max_seq_len=64)
    m = sllm.SLLM(cfg, backend="numpy", seed=1)
    m.tokenizer = tok.to_dict()
    path = tmp_path_factory.mktemp("budget") / "tiny.sllm"
    m.save(path)
    return path


EOS = TOK.eos_id


def _complete(url: str, **body: object) -> httpx.Response:
    body = {"model": "tiny", "prompt": "the", "max_tokens": 60, "temperature": 0,
            "logit_bias": {str(EOS): -100}, **body}  # no [EOS]: it would end the answer early
    return httpx.post(url + "/v1/completions", json=body, timeout=60)


def test_a_generating_request_ends_at_its_deadline_with_length(model_path):
    srv = ThreadServer(model_path, max_batch=1, step_delay=0.05, request_timeout=0.6)
    try:
        t0 = time.monotonic()
        r = _complete(srv.url)
        took = time.monotonic() - t0
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "length"
        assert "deadline of 0.6 s (--request-timeout)" in choice["note"]
        assert 0 < r.json()["usage"]["completion_tokens"] < 60  # cut, with what it had
        assert took < 0.6 + 5  # a step or two past the deadline, not the 3 s of 60 tokens
        stream = _complete(srv.url, stream=True)
        assert '"finish_reason": "length"' in stream.text and "data: [DONE]" in stream.text
    finally:
        srv.stop()


def test_a_request_that_waits_past_its_deadline_gets_504(model_path):
    # Steps of 1.5 s: the hog holds the only slot past the second request's deadline
    # (sent at 0.3 s, due at 1.3 s); the engine notices both at the end of the first step.
    srv = ThreadServer(model_path, max_batch=1, step_delay=1.5, request_timeout=1.0)
    try:
        first: list[httpx.Response] = []
        hog = threading.Thread(target=lambda: first.append(_complete(srv.url)))
        hog.start()
        time.sleep(0.3)
        r = _complete(srv.url)
        hog.join(60)
        assert first[0].status_code == 200
        assert first[0].json()["choices"][0]["finish_reason"] == "length"
        assert r.status_code == 504, r.text
        error = r.json()["error"]
        assert error["code"] == "request_timeout" and "waited" in error["message"]
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
    finally:
        srv.stop()


def test_a_hung_engine_cannot_make_a_client_wait_forever(model_path, monkeypatch):
    monkeypatch.setattr(serve_generate, "GRACE_S", 0.5)
    release = threading.Event()
    srv = ThreadServer(model_path, max_batch=2, request_timeout=0.5)
    decode = srv.model.decode

    def hangs(*args, **kwargs):  # the prefill of every request hangs, as a bad kernel might
        release.wait(60)
        return decode(*args, **kwargs)
    srv.model.decode = hangs
    try:
        t0 = time.monotonic()
        r = _complete(srv.url)
        assert r.status_code == 504, r.text
        assert "a decoding step is stuck" in r.json()["error"]["message"]
        assert time.monotonic() - t0 < 0.5 + 0.5 + 5
    finally:
        release.set()
        srv.stop()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "1e9"])
def test_request_timeout_is_validated(model_path, value):
    result = CliRunner().invoke(app, ["serve", str(model_path), "--request-timeout", value])
    assert result.exit_code != 0
    assert "--request-timeout must be in (0, 86400]" in result.output


def test_server_object_refuses_a_bad_timeout(model_path):
    from sllm import serve
    from sllm.batching import Engine
    m = sllm.load(model_path, backend="numpy")
    with pytest.raises(ValueError, match="request_timeout"):
        serve.Server(Engine(m, tokenizers.from_dict(m.tokenizer)), "tiny",
                     request_timeout=float("inf"))
    assert np.isfinite(serve_generate.DEFAULT_REQUEST_TIMEOUT_S)
