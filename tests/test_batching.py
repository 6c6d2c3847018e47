"""The continuous-batching engine without HTTP: text pieces, stop strings, the queue bound,
cancellation, and answers that do not depend on what else is in the batch."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sllm
from sllm.batching import Engine, QueueFull, Request, Sampling, TextStream, prefill_groups
from sllm.corpus import generate_corpus
from sllm.generate import encode_prompt, stream_text
from sllm.sampler import Sampler, SamplingParams, top_logprobs
from sllm.tokenizer import BPETokenizer, WordTokenizer

JAPANESE = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。" * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(JAPANESE + generate_corpus(5000, seed=2), 300)


def test_text_stream_pieces_add_up_to_the_full_decode(bpe):
    rng = np.random.default_rng(0)
    prompt = encode_prompt(bpe, "吾輩は", warn=False)
    new = rng.integers(4, bpe.vocab_size, 200).tolist()
    ts = TextStream(bpe, prompt, ())
    pieces = [ts.push(t)[0] for t in new] + [ts.flush()]
    whole = bpe.decode(prompt + new)
    assert "".join(pieces) == whole[len(bpe.decode(prompt)):].rstrip("\ufffd")


def test_text_stream_never_sends_half_a_character(bpe):
    text = "名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
    ids = bpe.encode(text)
    assert len(ids) > 5
    ts = TextStream(bpe, [bpe.bos_id], ())
    pieces = [ts.push(t)[0] for t in ids] + [ts.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_text_stream_cuts_at_the_first_stop_string():
    tok = WordTokenizer.train("the cat sat on the mat . the dog ran", 12, byte_fallback=False)
    ids = tok.encode("the cat sat on the mat . the dog ran")
    ts = TextStream(tok, ids[:1], ("on the", "dog"))
    out, stopped = [], False
    for t in ids[1:]:
        piece, stopped = ts.push(t)
        out.append(piece)
        if stopped:
            break
    assert stopped and "".join(out) == " cat sat "


@pytest.fixture(scope="module")
def model_and_tok():
    tok = WordTokenizer.train(generate_corpus(20_000, seed=1), 460)
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=16, num_layers=1,
                           num_heads=2, ffn_hidden_dim=32, dropout=0.0, max_seq_len=48)
    return sllm.SLLM(cfg, backend=sllm.backends.available()[0], seed=2), tok


def _collect(engine, prompt_ids, sampling):
    """Submit and return (text, done event) once finished."""
    done, pieces, end = threading.Event(), [], []

    def emit(event):
        if event.kind == "text":
            pieces.append(event.text)
        else:
            end.append(event)
            done.set()
    engine.submit(Request(prompt_ids, sampling, emit))
    return done, pieces, end


def test_engine_answers_equal_stream_text(model_and_tok):
    model, tok = model_and_tok
    engine = Engine(model, tok, max_batch=3, max_queue=10)
    try:
        prompts = ["the boat", "a girl said", "they", "in the morning", "one day he",
                   "she went"]
        kinds = [dict(temperature=0), dict(temperature=0.9, seed=5), dict(temperature=0.7,
                                                                          top_p=0.8, seed=1)]
        jobs = []
        for i, p in enumerate(prompts):  # 6 requests, 3 slots: some wait, then join
            ids = encode_prompt(tok, p, warn=False)
            kw = kinds[i % 3]
            jobs.append((ids, kw, _collect(engine, ids, Sampling(max_tokens=20, **kw))))
        # The answers to expect are computed before the engine runs: the engine's thread owns
        # the model while it runs (an SLLM is not shared between threads: its activation
        # buffers are reused by every forward, and the cpp kernels run without the GIL).
        expected = ["".join(stream_text(model, tok, ids, 20, **kw)) for ids, kw, _ in jobs]
        # Started after all six are queued, so three share the first steps on any machine
        # load (started first, a starved test thread could feed them in one at a time).
        engine.start()
        for (_, _, (done, pieces, end)), want in zip(jobs, expected, strict=True):
            assert done.wait(30)
            assert "".join(pieces) == want
            assert end[0].completion_tokens <= 20
        assert engine.stats.batched_rows > engine.stats.steps  # batches of more than one
    finally:
        engine.stop()


def test_waiting_prompts_are_prefilled_together_and_an_error_reaches_its_own_request(
        model_and_tok, monkeypatch):
    """Requests admitted at once share one prefill forward (prompts of different lengths,
    one of n = 2 choices) and answer as stream_text does; when that forward fails, each
    prompt is prefilled alone, so the request with the bad prompt alone gets the error."""
    model, tok = model_and_tok
    groups = []
    batched = model.prefill_batch

    def spy(prompts, cache, slots):
        groups.append(len(prompts))
        return batched(prompts, cache, slots)
    monkeypatch.setattr(model, "prefill_batch", spy)
    for bad in (False, True):
        engine = Engine(model, tok, max_batch=6, max_queue=10)
        prompts = [encode_prompt(tok, p, warn=False) for p in
                   ("the boat", "a girl said", "one day he", "in the morning")]
        if bad:
            prompts[2] = prompts[2] + [tok.vocab_size + 3]  # no such token
        texts = [["", ""] for _ in prompts]
        ends: list[list] = [[] for _ in prompts]
        left = threading.Semaphore(0)

        def emit(event, i, texts=texts, ends=ends, left=left):
            if event.kind == "text":
                texts[i][event.index] += event.text
            else:
                ends[i].append(event)
                left.release()
        try:
            for i, ids in enumerate(prompts):
                engine.submit(Request(ids, Sampling(max_tokens=12, temperature=0,
                                                    n=2 if i == 1 else 1),
                                      lambda e, i=i: emit(e, i)))
            expected = ["" if bad and i == 2 else
                        "".join(stream_text(model, tok, ids, 12, temperature=0))
                        for i, ids in enumerate(prompts)]
            groups.clear()
            engine.start()
            for _ in range(5 - bad):  # a done per choice, one error
                assert left.acquire(timeout=30)
        finally:
            engine.stop()
        assert groups == [4]  # one forward for all four prompts
        for i in range(len(prompts)):
            if bad and i == 2:
                assert [e.kind for e in ends[i]] == ["error"] and "token ids" in ends[i][0].text
                continue
            assert [e.kind for e in ends[i]] == ["done"] * (2 if i == 1 else 1)
            assert texts[i] == [expected[i], expected[i] if i == 1 else ""]


@pytest.mark.parametrize("bad,name", [(np.nan, "NaN"), (np.inf, "+inf"), (-np.inf, "-inf")])
def test_a_step_with_a_non_finite_logit_fails_instead_of_answering(model_and_tok, monkeypatch,
                                                                    bad, name):
    """The step's one check over the batch finds NaN and either infinity in a row (the
    model's own logits buffer, not a copy, is what the step reads)."""
    model, tok = model_and_tok
    real = model.decode_batch

    def poisoned(*args):
        logits = real(*args)
        logits[-1, 7] = bad
        return logits
    monkeypatch.setattr(model, "decode_batch", poisoned)
    engine = Engine(model, tok, max_batch=2, max_queue=4)
    ids = encode_prompt(tok, "the boat", warn=False)
    jobs = [_collect(engine, ids, Sampling(max_tokens=5, temperature=0)) for _ in range(2)]
    engine.start()
    try:
        for done, _, end in jobs:
            assert done.wait(30)
            assert end[0].kind == "error" and f"hold {name}" in end[0].text, end[0].text
    finally:
        engine.stop()


def test_prefill_groups_keep_order_adapter_and_padding_bounds():
    def req(n, adapter=None):
        return (Request([1] * n, Sampling(max_tokens=1), lambda e: None, adapter=adapter), [0])
    a, b = object(), object()
    items = [req(16), req(16, a), req(12), req(3), req(16, a), req(16, b), req(16)]
    sizes = [[(len(r.prompt_ids), r.adapter) for r, _ in g] for g in prefill_groups(items, 1024)]
    # each adapter's requests (the base's too) in one forward, in order of admission
    assert sizes == [[(16, None), (12, None), (3, None), (16, None)], [(16, a), (16, a)],
                     [(16, b)]]
    assert [len(g) for g in prefill_groups([req(64)] * 20, 1024)] == [16, 4]
    # a long prompt after short ones would more than double their tokens: a forward of its own
    assert [len(g) for g in prefill_groups([req(2), req(2), req(40), req(30)], 1024)] == [2, 2]


def test_greedy_rows_beside_penalised_and_biased_ones_equal_stream_text(model_and_tok):
    """One argmax over the batch's logits picks the plain greedy rows' tokens; a greedy row
    whose logits are penalised, biased or asked for log-probabilities gets its own."""
    model, tok = model_and_tok
    engine = Engine(model, tok, max_batch=4, max_queue=4)
    try:
        kinds = [dict(temperature=0), dict(temperature=0, repetition_penalty=1.8),
                 dict(temperature=0, logit_bias=((tok.encode("the")[0], 8.0),)),
                 dict(temperature=0, frequency_penalty=1.5)]
        ids = encode_prompt(tok, "the boat", warn=False)
        jobs = [(kw, _collect(engine, ids, Sampling(max_tokens=16, logprobs=0 if i == 3
                                                    else None, **kw)))
                for i, kw in enumerate(kinds)]
        expected = ["".join(stream_text(model, tok, ids, 16, **{
            k: dict(v) if k == "logit_bias" else v for k, v in kw.items()})) for kw, _ in jobs]
        engine.start()
        answers = []
        for _, (done, pieces, _) in jobs:
            assert done.wait(30)
            answers.append("".join(pieces))
        assert answers == expected and len(set(answers)) > 1
    finally:
        engine.stop()


def test_a_batch_argmax_is_taken_only_for_a_greedy_draw_over_the_raw_logits():
    logits = np.array([0.0, 3.0, 1.0, 2.0], np.float32)
    plain = Sampler(SamplingParams(temperature=0), 4)
    assert plain.next(logits, argmax=1).token == 1
    assert Sampler(SamplingParams(temperature=0), 4).next(logits).token == 1
    biased = Sampler(SamplingParams(temperature=0, logit_bias=((3, 5.0),)), 4)
    assert biased.next(logits, argmax=1).token == 3  # the bias moves the argmax
    sampled = Sampler(SamplingParams(temperature=1.0, seed=0), 4)
    alone = Sampler(SamplingParams(temperature=1.0, seed=0), 4)
    draws = [sampled.next(logits, argmax=1).token for _ in range(20)]
    assert draws == [alone.next(logits).token for _ in range(20)] and set(draws) != {1}


def test_engine_queue_bound_and_cancel(model_and_tok):
    model, tok = model_and_tok
    engine = Engine(model, tok, max_batch=1, max_queue=1)  # not started: nothing moves
    ids = encode_prompt(tok, "the boat", warn=False)
    a = Request(ids, Sampling(max_tokens=3), lambda e: None)
    b = Request(ids, Sampling(max_tokens=3), lambda e: None)
    engine.submit(a)  # room: one free slot + a queue of one
    engine.submit(b)
    with pytest.raises(QueueFull, match="max-queue 1"):
        engine.submit(Request(ids, Sampling(max_tokens=3), lambda e: None))
    engine.cancel(a)
    assert engine.queue_depth() == 1
    engine.submit(Request(ids, Sampling(max_tokens=3), lambda e: None))
    engine.stop()


def test_engine_stop_fails_what_is_left(model_and_tok):
    model, tok = model_and_tok
    engine = Engine(model, tok, max_batch=1, max_queue=4)
    events = []
    engine.submit(Request([1, 2], Sampling(max_tokens=3), events.append))
    engine.stop()
    assert events[-1].kind == "error" and "shutting down" in events[-1].text


def test_a_grammar_that_allows_nothing_ends_with_stop_and_a_note(bpe):
    """Never a hung request: a constraint whose mask is empty ends the sequence."""
    class Nothing:
        def allowed_mask(self, remaining, eos_id=None):
            return np.zeros(bpe.vocab_size, bool)

    class NothingGrammar:
        def start(self):
            return Nothing()

    cfg = sllm.ModelConfig(vocab_size=bpe.vocab_size, embedding_dim=16, num_layers=1,
                           num_heads=2, ffn_hidden_dim=32, max_seq_len=32)
    engine = Engine(sllm.SLLM(cfg, backend="numpy", seed=1), bpe, max_batch=2)
    engine.start()
    try:
        events = []
        done = threading.Event()

        def emit(e):
            events.append(e)
            if e.kind == "done":
                done.set()
        engine.submit(Request([2, 5, 6], Sampling(max_tokens=5, grammar=NothingGrammar()), emit))
        assert done.wait(10)
    finally:
        engine.stop()
    assert events[-1].finish_reason == "stop" and "grammar allows no token" in events[-1].note
    assert events[-1].completion_tokens == 0


def _top_by_sorting(logp, k):
    """top_logprobs by a full sort: likeliest first, the lower id first among equals."""
    order = sorted(range(logp.size), key=lambda t: (-logp[t], t))[:max(k, 0)]
    return [(t, float(logp[t])) for t in order]


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, -1.0, -2.5, -np.inf, -0.5, -7.0]), min_size=1,
                       max_size=40),
       k=st.integers(0, 25))
def test_top_logprobs_orders_like_a_full_sort(values, k):
    """Ties and -inf included (a row of log-probabilities has ties; a masked one has -inf)."""
    logp = np.array(values)
    assert top_logprobs(logp, k) == _top_by_sorting(logp, k)
