"""Generation: KV cache equals full recomputation, [EOS] stop, context overflow, text streaming."""
import numpy as np
import pytest

import sllm
from sllm import tokenizer as T
from sllm.chat import ChatSession
from sllm.generate import encode_prompt, stream, stream_text


@pytest.fixture
def model(backend_name):
    cfg = sllm.ModelConfig(vocab_size=41, embedding_dim=24, num_layers=2, num_heads=3,
                           ffn_hidden_dim=40, dropout=0.1, max_seq_len=12)
    return sllm.SLLM(cfg, backend=backend_name, seed=5).eval()


def test_kv_cache_logits_equal_full_forward(model):
    tokens = np.random.default_rng(0).integers(0, 41, (1, 12))
    full = model.forward(tokens)[0]
    cache = model.new_cache(1)
    rows = [model.decode(tokens[:, :3], cache)[0]]
    rows += [model.decode(tokens[:, t:t + 1], cache)[0] for t in range(3, 12)]
    np.testing.assert_allclose(np.stack(rows), full[2:], rtol=0, atol=2e-5)


def test_a_one_token_decode_step_checks_what_decode_checks(model):
    """decode()'s path for one token at batch 1 (each step of generate) refuses what the
    general path refuses, with its messages."""
    cache = model.new_cache(1)
    model.decode(np.array([[1, 2]]), cache)
    for bad, match in ((np.array([[41]]), "token ids"), (np.array([[-1]]), "token ids"),
                       (np.array([[1.0]]), "integers")):
        with pytest.raises(ValueError, match=match):
            model.decode(bad, cache)
    assert cache.pos == 2
    for t in range(2, 12):
        model.decode(np.array([[t]], np.uint8), cache)
    with pytest.raises(ValueError, match="KV cache full"):
        model.decode(np.array([[3]]), cache)


def _greedy_by_recomputation(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(model.forward(np.array([ids]))[0, -1])))
    return ids


def test_cached_greedy_generation_matches_recomputation(model):
    prompt = [3, 7, 1]
    assert model.generate(prompt, 9, temperature=0) == _greedy_by_recomputation(model, prompt, 9)


def test_sampling_is_seeded(model):
    a = model.generate([1, 2], 8, temperature=1.0, top_k=5, seed=3)
    b = model.generate([1, 2], 8, temperature=1.0, top_k=5, seed=3)
    assert a == b and len(a) == 10


def test_the_sampler_makes_its_generator_on_the_first_draw_that_needs_it():
    """Greedy decoding never makes one (default_rng costs 20 us a sequence); a seeded
    sampler's lazily made generator draws what default_rng(seed) made up front draws."""
    from sllm.generate import sampling_params
    from sllm.sampler import Sampler, sample_next
    logits = np.random.default_rng(1).standard_normal((6, 41)).astype(np.float32)
    greedy = Sampler(sampling_params(0, vocab_size=41), 41)
    assert [greedy.next(row).token for row in logits] == [int(np.argmax(r)) for r in logits]
    assert greedy._rng is None
    sampler, rng = Sampler(sampling_params(1.0, top_k=5, seed=7, vocab_size=41), 41), \
        np.random.default_rng(7)
    assert [sampler.next(row).token for row in logits] == \
        [sample_next(row, rng, 1.0, 5) for row in logits]


def test_stops_at_eos(model):
    first = model.generate([1, 2], 1, temperature=0)[-1]
    out = list(stream(model, [1, 2], 10, temperature=0, eos_id=first))
    assert out == [first]


def test_context_full_warns_and_keeps_going(model):
    with pytest.warns(UserWarning, match="truncated to the last 12"):
        out = model.generate(list(range(20)), 2, temperature=0)
    assert len(out) == 22
    with pytest.warns(UserWarning, match="context full"):
        out = model.generate([1], 15, temperature=0)
    assert len(out) == 16


TEXT = "A: Hello! How are you?\nB: I am fine, thank you.\n\n" * 20


def _word_model():
    tok = T.WordTokenizer.train(TEXT, 50, byte_fallback=False)
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=16, num_layers=1,
                           num_heads=2, ffn_hidden_dim=16, dropout=0.0, max_seq_len=32)
    return sllm.SLLM(cfg, backend="numpy", seed=0).eval(), tok


def test_unknown_prompt_words_warn():
    _, tok = _word_model()
    with pytest.warns(UserWarning, match="encoded as \\[UNK\\]: 'zebra'"):
        ids = encode_prompt(tok, "Hello zebra")
    assert ids == [T.BOS_ID, tok.encode("Hello")[0], T.UNK_ID]


def test_stream_text_pieces_join_to_the_decoded_text():
    model, tok = _word_model()
    ids = encode_prompt(tok, "A: Hello!")
    pieces = list(stream_text(model, tok, ids, 12, temperature=1.0, seed=1))
    full = model.generate(ids, 12, temperature=1.0, seed=1, eos_id=tok.eos_id)
    new = [t for t in full[len(ids):] if t != tok.eos_id]
    assert tok.decode(ids) + "".join(pieces) == tok.decode(ids + new)


def test_stream_text_holds_back_partial_utf8():
    tok = T.BPETokenizer.train("日本語のテキスト。" * 30, 270)
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=16, num_layers=1,
                           num_heads=2, ffn_hidden_dim=16, dropout=0.0, max_seq_len=40)
    model = sllm.SLLM(cfg, backend="numpy", seed=0).eval()
    for piece in stream_text(model, tok, encode_prompt(tok, "日本"), 30, temperature=1.0, seed=2):
        assert not piece.endswith("\ufffd")


def test_chat_session_formats_turns_and_trims_history():
    model, tok = _word_model()
    session = ChatSession(model, tok, max_new_tokens=6, temperature=0)
    for _ in range(6):
        reply = "".join(session.reply("How are you?"))
        assert "\n" not in reply
    assert session.turns[-2] == "A: How are you?" and session.turns[-1].startswith("B:")
    assert len(encode_prompt(tok, "\n".join(session.turns), warn=False)) <= 32
