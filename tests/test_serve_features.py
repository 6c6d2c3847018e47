"""`sllm serve` as evaluation harnesses and agent frameworks use it, through the official
`openai` client: n choices, logprobs (streamed too), echo scoring equal to `sllm eval`,
prompt lists, penalties and logit_bias equal to the library's sampler, JSON-schema /
json_object / regex / choice constrained output (jsonschema validates every answer, also
16 at once), chats longer than the context, tool requests refused clearly."""
import base64
import json
import threading

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")

from serving import BACKEND, ThreadServer  # noqa: E402 - after pytest.importorskip

import sllm  # noqa: E402 - after pytest.importorskip
from sllm.corpus import generate_corpus  # noqa: E402 - after pytest.importorskip
from sllm.evaluate import evaluate  # noqa: E402 - after pytest.importorskip
from sllm.generate import encode_prompt, generate  # noqa: E402 - after pytest.importorskip
from sllm.sampler import log_softmax  # noqa: E402 - after pytest.importorskip
from sllm.tokenizer import CharTokenizer, WordTokenizer  # noqa: E402 - after importorskip

CONTEXT = 96
JSON_CHARS = '{}[]":,0123456789-.eE+_ abcdefghijklmnopqrstuvwxyz'


def _save(tok, path):
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=32, num_layers=2,
                           num_heads=2, ffn_hidden_dim=64, dropout=0.0, max_seq_len=CONTEXT)
    model = sllm.SLLM(cfg, backend="numpy", seed=3)
    model.tokenizer = tok.to_dict()
    model.save(path)
    return path


@pytest.fixture(scope="module")
def word_server(tmp_path_factory):
    tok = WordTokenizer.train(generate_corpus(20_000, seed=1), 300, byte_fallback=False)
    server = ThreadServer(_save(tok, tmp_path_factory.mktemp("w") / "tiny.sllm"), max_batch=8)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def char_server(tmp_path_factory):
    tok = CharTokenizer.train(generate_corpus(5_000, seed=1) + JSON_CHARS)
    server = ThreadServer(_save(tok, tmp_path_factory.mktemp("c") / "tiny.sllm"),
                          max_batch=16, max_queue=32)
    yield server
    server.stop()


def test_n_choices_share_the_prompt_and_choice_0_is_the_n_1_answer(word_server):
    c = word_server.client()
    one = c.completions.create(model="tiny", prompt="the cat", max_tokens=8, seed=5)
    many = c.completions.create(model="tiny", prompt="the cat", max_tokens=8, seed=5, n=3)
    assert [ch.index for ch in many.choices] == [0, 1, 2]
    assert many.choices[0].text == one.choices[0].text
    assert len({ch.text for ch in many.choices}) > 1
    assert many.usage.prompt_tokens == one.usage.prompt_tokens
    chat = c.chat.completions.create(model="tiny", n=2, max_tokens=6, seed=1,
                                     messages=[{"role": "user", "content": "hello"}])
    assert [ch.index for ch in chat.choices] == [0, 1]


def test_a_list_of_prompts_gets_prompt_times_n_choices(word_server):
    c = word_server.client()
    prompts = ["the cat", "one day"]
    r = c.completions.create(model="tiny", prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    for i, p in enumerate(prompts):
        alone = c.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0)
        assert r.choices[2 * i].text == r.choices[2 * i + 1].text == alone.choices[0].text


def test_chat_logprobs_are_the_models_own(word_server):
    model, tok = word_server.model, word_server.tok
    r = word_server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5,
        temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert content and all(len(e.top_logprobs) == 3 for e in content)
    first = content[0]
    ids = encode_prompt(tok, "A: hello\nB:", warn=False)
    expected = log_softmax(model.forward(np.array([ids]))[0, -1])
    assert first.token_id == int(np.argmax(expected))  # greedy
    assert abs(first.logprob - expected[first.token_id]) < 1e-5
    assert first.top_logprobs[0].logprob == pytest.approx(first.logprob)


def test_streamed_logprobs_match_the_whole_answer(word_server):
    c = word_server.client()
    args = dict(model="tiny", messages=[{"role": "user", "content": "the boat"}],
                max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    whole = c.chat.completions.create(**args).choices[0].logprobs.content
    streamed = [e for chunk in c.chat.completions.create(stream=True, **args)
                for ch in chunk.choices if ch.logprobs for e in ch.logprobs.content]
    assert [e.token_id for e in streamed] == [e.token_id for e in whole]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole])
    comp = list(c.completions.create(model="tiny", prompt="the boat", max_tokens=4,
                                     temperature=0, logprobs=1, stream=True))
    assert sum(len(ch.logprobs.tokens) for k in comp for ch in k.choices if ch.logprobs) == 4


def test_echo_logprobs_equal_sllm_eval(word_server):
    tok = word_server.tok
    text = generate_corpus(400, seed=9)
    ids = tok.encode(text)[:CONTEXT]
    r = word_server.client().completions.create(model="tiny", prompt=ids, max_tokens=0,
                                                echo=True, logprobs=0)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and lp.token_ids == ids
    api_loss = -float(np.mean(lp.token_logprobs[1:]))
    assert abs(api_loss - evaluate(word_server.model, np.array(ids))["loss"]) < 1e-4
    assert r.choices[0].text == tok.decode(ids)


def test_penalties_and_bias_equal_the_library_sampler(word_server):
    model, tok = word_server.model, word_server.tok
    ids = encode_prompt(tok, "the cat", warn=False)
    settings = dict(frequency_penalty=1.5, presence_penalty=0.5)
    lib = generate(model, ids, 10, temperature=0.8, seed=4, eos_id=tok.eos_id,
                   repetition_penalty=1.3, logit_bias={7: 3.0}, min_p=0.05, **settings)
    r = word_server.client().completions.create(
        model="tiny", prompt="the cat", max_tokens=10, temperature=0.8, seed=4,
        logit_bias={"7": 3.0}, extra_body={"repetition_penalty": 1.3, "min_p": 0.05},
        logprobs=0, **settings)
    assert r.choices[0].logprobs.token_ids == [t for t in lib[len(ids):] if t != tok.eos_id]
    forced = word_server.client().completions.create(
        model="tiny", prompt="the cat", max_tokens=4, temperature=0, logit_bias={"7": 100},
        logprobs=0)
    assert forced.choices[0].logprobs.token_ids == [7] * 4


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    "ok": {"type": "boolean"}}, "required": ["name", "age", "ok"]}


def test_json_schema_output_validates_16_at_once(char_server):
    results: dict[int, str] = {}

    def ask(i):
        r = char_server.client().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"person {i}"}],
            max_tokens=80, seed=i, response_format={"type": "json_schema", "json_schema": {
                "name": "person", "schema": SCHEMA, "strict": True}})
        results[i] = r.choices[0].message.content
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 16
    for text in results.values():
        jsonschema.validate(json.loads(text), SCHEMA)


def test_pydantic_parse_json_object_regex_and_choices(char_server):
    class Item(pydantic.BaseModel):
        name: str
        count: int
        fresh: bool

    c = char_server.client()
    parsed = c.chat.completions.parse(model="tiny", response_format=Item, max_tokens=60,
                                      messages=[{"role": "user", "content": "an item"}])
    assert isinstance(parsed.choices[0].message.parsed, Item)
    obj = c.completions.create(model="tiny", prompt="a", max_tokens=60, seed=2,
                               extra_body={"response_format": {"type": "json_object"}})
    assert isinstance(json.loads(obj.choices[0].text), dict)
    reg = c.completions.create(model="tiny", prompt="a", max_tokens=20, seed=3,
                               extra_body={"regex": r"[0-9]{3}-[a-z]{2}"})
    assert len(reg.choices[0].text) == 6 and reg.choices[0].text[3] == "-"
    pick = c.chat.completions.create(model="tiny", max_tokens=10, seed=4,
                                     messages=[{"role": "user", "content": "pick"}],
                                     extra_body={"choices": ["yes", "no", "maybe"]})
    assert pick.choices[0].message.content in ("yes", "no", "maybe")


def test_max_tokens_too_small_for_the_format_is_a_400(char_server):
    with pytest.raises(openai.BadRequestError) as e:
        char_server.client().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=3,
            response_format={"type": "json_schema", "json_schema": {"name": "p",
                                                                    "schema": SCHEMA}})
    assert e.value.body["param"] == "max_tokens"


def _dialogue(turns):
    msgs = [{"role": "system", "content": "be kind"}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"the man went to the river {i}"})
        msgs.append({"role": "assistant", "content": "the boat was on the water"})
    return msgs + [{"role": "user", "content": "hello"}]


def test_a_chat_longer_than_the_context_is_trimmed(word_server):
    r = word_server.client().chat.completions.create(model="tiny", messages=_dialogue(17),
                                                     max_tokens=8)
    assert r.usage.prompt_tokens + 8 <= CONTEXT
    assert r.choices[0].finish_reason in ("stop", "length")


def test_context_overflow_error_refuses(tmp_path):
    tok = WordTokenizer.train(generate_corpus(20_000, seed=1), 300, byte_fallback=False)
    server = ThreadServer(_save(tok, tmp_path / "tiny.sllm"), context_overflow="error")
    try:
        with pytest.raises(openai.BadRequestError) as e:
            server.client().chat.completions.create(model="tiny", messages=_dialogue(17),
                                                    max_tokens=8)
        assert e.value.body["code"] == "context_length_exceeded"
    finally:
        server.stop()


def test_tool_requests_say_there_is_no_tool_template(word_server):
    with pytest.raises(openai.BadRequestError) as e:
        word_server.client().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert "no tool-calling template" in e.value.body["message"]
    assert e.value.body["param"] == "tools"


def test_backend_is_the_suites(word_server):
    assert word_server.model.backend.name == BACKEND


def test_models_retrieve_and_unknown_model(word_server):
    c = word_server.client()
    m = c.models.retrieve("tiny")
    assert m.id == "tiny" and m.owned_by == "sllm"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-9")


def test_embeddings_are_pooled_normalised_and_batched(word_server):
    model, tok = word_server.model, word_server.tok
    texts = ["the cat sat", "one day the man went to the river", "hello"]
    c = word_server.client()
    batch = c.embeddings.create(model="tiny", input=texts)
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert batch.usage.prompt_tokens == sum(len(tok.encode(t)) for t in texts)
    for text, d in zip(texts, batch.data, strict=True):
        v = np.array(d.embedding)
        assert abs(np.linalg.norm(v) - 1) < 1e-5
        alone = c.embeddings.create(model="tiny", input=text).data[0].embedding
        assert np.allclose(alone, v, atol=1e-5)
        h = model.hidden_states(np.array([tok.encode(text)]))[0].mean(axis=0)
        assert np.allclose(v, h / np.linalg.norm(h), atol=1e-5)
    b64 = c.embeddings.create(model="tiny", input=texts[0], encoding_format="base64")
    raw = b64.data[0].embedding  # the client hands back the string when asked for base64
    decoded = np.frombuffer(base64.b64decode(raw), "<f4")
    assert np.allclose(decoded, batch.data[0].embedding, atol=1e-6)
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="tiny", input=["ok", "the " * 200])
    assert e.value.body["param"] == "input[1]"


def test_json_access_log_and_latency_histograms(tmp_path):
    from sllm.serve_ops import Observer
    tok = WordTokenizer.train(generate_corpus(20_000, seed=1), 300, byte_fallback=False)
    lines: list[str] = []
    server = ThreadServer(_save(tok, tmp_path / "tiny.sllm"),
                          observer=Observer("tiny", "json", lines.append))
    try:
        c = server.client()
        # greedy: sampled, the end token came before max_tokens in 7 of 400 answers
        answer = c.completions.create(model="tiny", prompt="the cat", max_tokens=5, temperature=0)
        list(c.chat.completions.create(model="tiny", max_tokens=4, stream=True, temperature=0,
                                       messages=[{"role": "user", "content": "hi"}]))
        # no wait: a request is counted before its last byte is sent (serve_ops.Observe)
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    logged = [json.loads(line) for line in lines]
    first, second = logged[0], logged[1]
    assert first["method"] == "POST" and first["path"] == "/v1/completions"
    assert first["status"] == 200
    assert first["completion_tokens"] == answer.usage.completion_tokens == 5
    assert first["prompt_tokens"] > 0 and 0 < first["first_token_ms"] <= first["total_ms"]
    assert second["path"] == "/v1/chat/completions" and second["first_token_ms"] is not None
    assert logged[-1]["event"] == "stopped"
    for name in ("sllm_queue_wait_seconds", "sllm_time_to_first_token_seconds",
                 "sllm_request_duration_seconds"):
        assert f"# TYPE {name} histogram" in metrics
        assert f'{name}_count{{model="tiny"}} 2' in metrics
        assert f'{name}_bucket{{model="tiny",le="+Inf"}} 2' in metrics
    assert 'sllm_model_completion_tokens_total{model="tiny"} ' in metrics


def test_streamed_choices_and_echo_equal_the_whole_answers(word_server):
    c = word_server.client()
    args = dict(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=6,
                seed=3, n=2)
    whole = c.chat.completions.create(**args)
    parts = {0: "", 1: ""}
    finishes = {}
    for chunk in c.chat.completions.create(stream=True, **args):
        for ch in chunk.choices:
            parts[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert [parts[i].strip() for i in (0, 1)] == [ch.message.content for ch in whole.choices]
    assert finishes == {ch.index: ch.finish_reason for ch in whole.choices}
    comp = dict(model="tiny", prompt="the boat", max_tokens=5, temperature=0, echo=True)
    text = c.completions.create(**comp).choices[0].text
    streamed = "".join(ch.text for k in c.completions.create(stream=True, **comp)
                       for ch in k.choices)
    assert streamed == text and text.startswith("the boat")
