"""`sllm serve` through the official `openai` client against servers started here on free
loopback ports: every endpoint, streaming and not, every 400/401/404/503 path, a client
that disconnects mid-stream, and concurrent requests that each get their own answer."""
import itertools
import re
import signal
import subprocess
import sys
import threading
import time
import warnings

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from serving import ThreadServer  # noqa: E402 - after pytest.importorskip

import sllm  # noqa: E402 - after pytest.importorskip
from sllm import backends  # noqa: E402 - after pytest.importorskip
from sllm.batching import Engine  # noqa: E402 - after pytest.importorskip
from sllm.chat import ChatSession  # noqa: E402 - after pytest.importorskip
from sllm.corpus import generate_corpus  # noqa: E402 - after pytest.importorskip
from sllm.generate import encode_prompt, stream_text  # noqa: E402 - after pytest.importorskip
from sllm.tokenizer import WordTokenizer, from_dict  # noqa: E402 - after pytest.importorskip

BACKEND = backends.available()[0]
CONTEXT = 64


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A small random model with a word vocabulary inside, saved as tiny.sllm."""
    tok = WordTokenizer.train(generate_corpus(20_000, seed=1), 300, byte_fallback=False)
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=32, num_layers=2,
                           num_heads=2, ffn_hidden_dim=64, dropout=0.0, max_seq_len=CONTEXT)
    model = sllm.SLLM(cfg, backend="numpy", seed=1)
    model.tokenizer = tok.to_dict()
    path = tmp_path_factory.mktemp("serve") / "tiny.sllm"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def srv(model_path):
    server = ThreadServer(model_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference(model_path):
    """Greedy / seeded output computed without the server, as `sllm generate` does."""
    model = sllm.load(model_path, backend=BACKEND)
    tok = from_dict(model.tokenizer)

    def complete(prompt, max_tokens, **sampling):
        ids = encode_prompt(tok, prompt, warn=False)
        return "".join(stream_text(model, tok, ids, max_tokens, **sampling))

    def chat(text, max_tokens):
        session = ChatSession(model, tok, max_tokens, temperature=0)
        with warnings.catch_warnings():  # words outside the vocabulary are fine here
            warnings.simplefilter("ignore")
            return "".join(session.reply(text)).strip()
    return complete, chat


PROMPTS = ["the cat", "she said that", "a small boat on the river", "in the morning the",
           "he", "they went to the market and", "one day", "the old man said"]


def test_models_and_health(srv):
    models = srv.client().models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"


def test_completion_greedy_equals_generate(srv, reference):
    complete, _ = reference
    for prompt in PROMPTS[:3]:
        r = srv.client().completions.create(model="tiny", prompt=prompt, max_tokens=12,
                                            temperature=0)
        assert r.object == "text_completion" and r.id.startswith("cmpl-")
        assert r.choices[0].text == complete(prompt, 12, temperature=0)
        assert r.choices[0].finish_reason == "length"
        n_prompt = len(encode_prompt(srv.tok, prompt, warn=False))
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, 12)
        assert r.usage.total_tokens == n_prompt + 12


def test_completion_stream_equals_non_stream(srv):
    client = srv.client()
    whole = client.completions.create(model="tiny", prompt="the cat", max_tokens=10,
                                      temperature=0).choices[0].text
    chunks = list(client.completions.create(model="tiny", prompt="the cat", max_tokens=10,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_seeded_sampling_is_reproducible_and_equals_generate(srv, reference):
    complete, _ = reference
    kw = dict(model="tiny", prompt="one day", max_tokens=15, temperature=0.9, top_p=0.95,
              seed=42)
    a = srv.client().completions.create(**kw).choices[0].text
    b = srv.client().completions.create(**kw).choices[0].text
    assert a == b == complete("one day", 15, temperature=0.9, top_p=0.95, seed=42)
    c = srv.client().completions.create(**{**kw, "seed": 43}).choices[0].text
    assert c != a


def test_stop_string_cuts_the_text(srv, reference):
    complete, _ = reference
    full = complete("the cat", 20, temperature=0)
    word = full.split()[3]
    cut = full[:full.index(word)]
    r = srv.client().completions.create(model="tiny", prompt="the cat", max_tokens=20,
                                        temperature=0, stop=[word, "zzzz"])
    assert (r.choices[0].text, r.choices[0].finish_reason) == (cut, "stop")
    streamed = srv.client().completions.create(model="tiny", prompt="the cat", max_tokens=20,
                                               temperature=0, stop=word, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_chat_equals_sllm_chat(srv, reference):
    _, chat = reference
    client = srv.client()
    msgs = [{"role": "user", "content": "the cat said that you are there ."}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12,
                                       temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == chat("the cat said that you are there .", 12)
    assert r.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == \
        r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_chat_template_matches_sllm_chat():
    from sllm.serve_api import render_chat
    text = render_chat([("system", "be brief"), ("user", "hi\n there"), ("assistant", "hello"),
                        ("user", "bye")])
    assert text == "be brief\nA: hi there\nB: hello\nA: bye\nB:"


def _status(fn):
    with pytest.raises(openai.APIStatusError) as info:
        fn()
    return info.value


BAD = [  # (what, request kwargs, param named in the error)
    ("wrong type", {"max_tokens": "8"}, "max_tokens"),
    ("bool for int", {"max_tokens": True}, "max_tokens"),
    ("temperature range", {"temperature": 2.5}, "temperature"),
    ("top_p zero", {"top_p": 0}, "top_p"),
    ("n > 8", {"n": 9}, "n"),
    ("n > slots", {"n": 5}, "n"),
    ("unknown field", {"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ("too many stops", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("logprobs > 20", {"logprobs": 21}, "logprobs"),
    ("unsupported feature", {"suffix": "x"}, "suffix"),
    ("penalty range", {"presence_penalty": 2.5}, "presence_penalty"),
    ("min_p range", {"extra_body": {"min_p": 1.5}}, "min_p"),
    ("logit_bias id out of range", {"logit_bias": {"99999": 1}}, "logit_bias"),
    ("logit_bias value", {"logit_bias": {"5": 101}}, "logit_bias"),
    ("invalid regex", {"extra_body": {"regex": "(ab"}}, "regex"),
    ("bad choices", {"extra_body": {"choices": []}}, "choices"),
    ("invalid schema", {"extra_body": {"response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "thing"}}}}},
     "response_format"),
    ("unsatisfiable schema", {"extra_body": {"response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "array", "minItems": 3, "maxItems": 1}}}}}, "response_format"),
    ("grammar the vocabulary cannot write", {"extra_body": {"response_format": {
        "type": "json_object"}}}, "response_format"),
    ("two grammars", {"extra_body": {"regex": "a", "choices": ["a"]}}, "choices"),
    ("max_tokens too large", {"max_tokens": 1000}, "max_tokens"),
    ("max_tokens zero", {"max_tokens": 0}, "max_tokens"),
    ("prompt too long", {"prompt": "the " * 80}, "prompt"),
    ("token id out of vocab", {"prompt": [1, 2, 99999]}, "prompt"),
    ("prompt list with a bad item", {"prompt": ["a", 5]}, "prompt"),
    ("stream_options without stream", {"stream_options": {"include_usage": True}},
     "stream_options"),
    ("seed float", {"seed": 1.5}, "seed"),
    ("negative seed", {"seed": -1}, "seed"),
    ("huge seed", {"seed": 10 ** 30}, "seed"),
]


@pytest.mark.parametrize("what,kw,param", BAD, ids=[b[0] for b in BAD])
def test_bad_completion_requests_get_400(srv, what, kw, param):
    args = {"model": "tiny", "prompt": "the cat", "max_tokens": 5, **kw}
    e = _status(lambda: srv.client().completions.create(**args))
    assert e.status_code == 400
    assert e.body["type"] == "invalid_request_error" and param in (e.body["param"] or "")
    assert e.body["message"]


CHAT_BAD = [
    ("bad role", {"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ("content type", {"messages": [{"role": "user", "content": 5}]}, "content"),
    ("no messages", {"messages": []}, "messages"),
    ("unknown message key", {"messages": [{"role": "user", "content": "x", "mood": 1}]},
     "mood"),
    ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("tool_choice", {"tool_choice": "required"}, "tool_choice"),
    ("top_logprobs > 20", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("top_logprobs without logprobs", {"top_logprobs": 2}, "top_logprobs"),
    ("long prompt", {"messages": [{"role": "user", "content": "the " * 80}]}, "messages"),
    ("max_completion_tokens", {"max_completion_tokens": 500}, "max_completion_tokens"),
]


@pytest.mark.parametrize("what,kw,param", CHAT_BAD, ids=[b[0] for b in CHAT_BAD])
def test_bad_chat_requests_get_400(srv, what, kw, param):
    args = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **kw}
    e = _status(lambda: srv.client().chat.completions.create(**args))
    assert e.status_code == 400 and param in (e.body["param"] or "")


@pytest.mark.parametrize("body", [b"{bad json", b"[1, 2]", b"\xff\xfe", b"",
                                  b'{"model": "tiny"}', b'{"prompt": "x"}'])
def test_malformed_bodies_get_400_and_the_server_lives(srv, body):
    r = httpx.post(srv.url + "/v1/completions", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(srv.url + "/health").status_code == 200


def test_unknown_model_endpoint_and_method(srv):
    e = _status(lambda: srv.client().completions.create(model="gpt-9", prompt="x"))
    assert e.status_code == 404 and e.body["code"] == "model_not_found"
    assert httpx.get(srv.url + "/v1/nothing").status_code == 404
    assert httpx.get(srv.url + "/v1/completions").status_code == 405


def test_concurrent_requests_each_get_their_own_answer(srv, reference):
    complete, _ = reference
    results = {}

    def ask(i, prompt):
        client = srv.client()
        if i % 2:
            stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=20,
                                               temperature=0, stream=True)
            results[i] = "".join(c.choices[0].text for c in stream)
        else:
            results[i] = client.completions.create(model="tiny", prompt=prompt, max_tokens=20,
                                                   temperature=0).choices[0].text
    before = _metric(srv, "sllm_decode_steps_total"), _metric(srv, "sllm_decode_rows_total")
    threads = [threading.Thread(target=ask, args=(i, p)) for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: complete(p, 20, temperature=0) for i, p in enumerate(PROMPTS)}
    steps = _metric(srv, "sllm_decode_steps_total") - before[0]
    rows = _metric(srv, "sllm_decode_rows_total") - before[1]
    assert rows > steps  # some steps decoded several sequences at once


def _metric(srv, name, labels=""):
    text = httpx.get(srv.url + "/metrics").text
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics_are_prometheus_text(srv):
    srv.client().completions.create(model="tiny", prompt="he", max_tokens=3)
    r = httpx.get(srv.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    for name in ("sllm_requests_total", "sllm_completion_tokens_total", "sllm_queue_depth",
                 "sllm_tokens_per_second", "sllm_active_sequences"):
        assert f"# TYPE {name} " in r.text
    assert _metric(srv, "sllm_requests_total", '{path="/v1/completions",code="200",model="tiny"}') >= 1


def test_full_queue_answers_503_with_retry_after(model_path):
    server = ThreadServer(model_path, max_batch=1, max_queue=1, step_delay=0.1)  # 4 s busy
    try:
        busy = [threading.Thread(target=lambda: server.client().completions.create(
            model="tiny", prompt="the cat", max_tokens=40, temperature=0)) for _ in range(2)]
        for t in busy:  # one decodes, one waits in the queue
            t.start()
        t0 = time.monotonic()
        while (server.engine.busy_slots(), server.engine.queue_depth()) != (1, 1):
            assert time.monotonic() - t0 < 10, "the two requests did not arrive"
            time.sleep(0.01)
        r = httpx.post(server.url + "/v1/completions",
                       json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        e = _status(lambda: server.client().completions.create(model="tiny", prompt="x"))
        assert e.status_code == 503
        for t in busy:
            t.join(30)
        ok = server.client().completions.create(model="tiny", prompt="x", max_tokens=2,
                                                 temperature=0)
        assert ok.usage.completion_tokens == 2
    finally:
        server.stop()


def test_disconnect_mid_stream_frees_the_slot(model_path):
    server = ThreadServer(model_path, max_batch=1, max_queue=0, step_delay=0.05)  # 3 s of work
    try:
        with httpx.Client() as http:
            with http.stream("POST", server.url + "/v1/completions",
                             json={"model": "tiny", "prompt": "the cat", "max_tokens": 60,
                                   "temperature": 0, "stream": True}) as r:
                lines = itertools.islice(r.iter_lines(), 5)
                got = [line for line in lines if line.startswith("data:")]
                assert got and server.engine.busy_slots() == 1
        t0 = time.monotonic()  # the connection is closed now
        while server.engine.busy_slots() and time.monotonic() - t0 < 2:
            time.sleep(0.005)
        freed = time.monotonic() - t0
        assert server.engine.busy_slots() == 0, "the slot was not freed"
        assert freed < 1.0  # at the next step boundary, not after the remaining 55 steps
        assert _metric(server, "sllm_sequences_finished_total", '{reason="cancelled"}') == 1
        # with max_queue 0 and one slot, a new request is only accepted if the slot is free
        r = server.client().completions.create(model="tiny", prompt="x", max_tokens=2,
                                                temperature=0)
        assert r.choices[0].finish_reason == "length"
    finally:
        server.stop()


def test_disconnect_while_waiting_for_a_whole_answer_frees_the_slot(model_path):
    server = ThreadServer(model_path, max_batch=1, max_queue=0, step_delay=0.05)  # 3 s of work
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", timeout=httpx.Timeout(5, read=0.3),
                       json={"model": "tiny", "prompt": "the cat", "max_tokens": 60, "temperature": 0})
        t0 = time.monotonic()
        while server.engine.busy_slots() and time.monotonic() - t0 < 3:
            time.sleep(0.01)
        assert server.engine.busy_slots() == 0
        assert time.monotonic() - t0 < 1.0  # noticed within a 0.5 s poll, not after 60 steps
    finally:
        server.stop()


def test_api_key_is_required_when_set(model_path):
    server = ThreadServer(model_path, api_key="s3cret")
    try:
        e = _status(lambda: server.client(api_key="wrong").models.list())
        assert e.status_code == 401 and e.body["code"] == "invalid_api_key"
        assert httpx.get(server.url + "/v1/models").status_code == 401
        assert httpx.get(server.url + "/health").status_code == 200
        ok = server.client(api_key="s3cret").completions.create(model="tiny", prompt="he",
                                                                max_tokens=2, temperature=0)
        assert ok.usage.completion_tokens == 2
    finally:
        server.stop()


def test_engine_errors_do_not_kill_the_server(model_path):
    server = ThreadServer(model_path)
    try:
        real = server.model.decode_batch
        server.model.decode_batch = lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
        e = _status(lambda: server.client().completions.create(model="tiny", prompt="he",
                                                               max_tokens=5, temperature=0))
        assert e.status_code == 500 and "boom" in e.body["message"]
        server.model.decode_batch = real
        ok = server.client().completions.create(model="tiny", prompt="he", max_tokens=5,
                                                 temperature=0)
        assert ok.usage.completion_tokens == 5 and server.engine.busy_slots() == 0
    finally:
        server.stop()


def test_cli_serve_on_a_free_port(model_path, reference):
    complete, _ = reference
    proc = subprocess.Popen([sys.executable, "-m", "sllm", "serve", str(model_path),
                             "--port", "0", "--backend", BACKEND, "--max-batch", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        assert m, line
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{m.group(1)}/v1", api_key="x",
                               max_retries=3)
        r = client.completions.create(model="tiny", prompt="she said that", max_tokens=9,
                                      temperature=0)
        assert r.choices[0].text == complete("she said that", 9, temperature=0)
    finally:
        proc.terminate()
        proc.wait(20)
    # A clean shutdown (the "stopped" line below), then uvicorn re-raises SIGTERM: never an
    # error status.
    assert proc.returncode in (0, -signal.SIGTERM), proc.returncode
    assert "sllm serve started: url=http://127.0.0.1:" in line and "model=tiny" in line
    rest = proc.stdout.read()
    assert re.search(r'"POST /v1/completions" 200 prompt=\d+ completion=9 first_token=[\d.]+ms '
                     r'total=[\d.]+ms', rest), rest
    assert "sllm serve stopped: model=tiny requests=1" in rest, rest


def test_engine_refuses_bad_sizes(model_path):
    model = sllm.load(model_path, backend="numpy")
    with pytest.raises(ValueError, match="max_batch"):
        Engine(model, from_dict(model.tokenizer), max_batch=0)
    assert np.isfinite(model.forward([[1, 2]])).all()
