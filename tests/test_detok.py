"""Incremental decoding (sllm.detok): for every tokenizer, the text of ids fed in any parts
equals decode() of all of them, byte tokens that split a character included; the serving
engine's TextStream built on it sends the growth of decode(prompt + new ids)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sllm import tokenizer as T
from sllm.batching import TextStream
from sllm.corpus import generate_corpus

CORPUS = generate_corpus(3_000, seed=3)
# Characters the small vocabularies below lack: written as 2-, 3- and 4-byte UTF-8 runs.
MULTIBYTE = ["é", "日本", "🙂", "e\u0301", "\u2019", "€5", "\x80"]


def _spm() -> T.SPMTokenizer:
    """llama2.c's layout: <unk>, <s>, </s>, the 256 byte tokens, then pieces (some with a
    leading space, which decode strips after <s>)."""
    pieces = ["<unk>", "<s>", "</s>", *T.BYTE_TOKENS, " ", "a", "b", "t", "h", "e", " the",
              "he", " a", "\n", "cat", " cat", "?", "日"]
    return T.SPMTokenizer(pieces, [0.0] * 259 + [-float(i) for i in range(len(pieces) - 259)])


TOKENIZERS = {
    "char": T.CharTokenizer.train(CORPUS, 300),
    "char-plain": T.CharTokenizer.train(CORPUS, byte_fallback=False),
    "word": T.WordTokenizer.train(CORPUS, 400),
    "word-plain": T.WordTokenizer.train(CORPUS, 100, lowercase=True),
    "spm": _spm(),
    "bpe": T.BPETokenizer.train(CORPUS + "".join(MULTIBYTE) * 3, 300),
}


def _chunks(tok: T.Tokenizer) -> list[list[int]]:
    """Encoded multibyte characters and every prefix of them (a run cut short)."""
    out = []
    for text in MULTIBYTE:
        ids = tok.encode(text)
        out += [ids[:k] for k in range(1, len(ids) + 1)]
    return out


def _ids(tok: T.Tokenizer) -> st.SearchStrategy[list[int]]:
    """Token streams: random ids (specials included) mixed with byte runs of characters."""
    one = st.integers(0, tok.vocab_size - 1).map(lambda i: [i])
    parts = st.lists(st.one_of(one, st.sampled_from(_chunks(tok))), max_size=24)
    return parts.map(lambda ps: [i for p in ps for i in p])


@pytest.mark.parametrize("name", list(TOKENIZERS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_feeding_in_any_parts_gives_decode(name, data):
    tok = TOKENIZERS[name]
    ids = data.draw(_ids(tok))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ids)), max_size=6)))
    d = tok.decoder()
    assert d is not None
    bounds = [0, *cuts, len(ids)]
    pieces = [d.feed(ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert "".join(pieces) + d.flush() == tok.decode(ids)
    one = tok.decoder()
    assert "".join(one.push(i) for i in ids) + one.flush() == tok.decode(ids)


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_one_id_at_a_time_holds_back_half_a_character(name):
    tok = TOKENIZERS[name]
    ids = tok.encode("日本 🙂")
    d = tok.decoder()
    pieces = [d.feed([i]) for i in ids]
    assert "".join(pieces) + d.flush() == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)


def test_a_run_cut_short_is_one_replacement_character_at_the_flush():
    tok = TOKENIZERS["char"]
    ids = tok.encode("🙂")[:3]
    d = tok.decoder()
    assert [d.feed([i]) for i in ids] == ["", "", ""]
    assert d.flush() == "\ufffd" == tok.decode(ids)


def test_byte_level_bpe_matches_the_hugging_face_decode_on_every_id():
    tok = TOKENIZERS["bpe"]
    d = tok.decoder()
    ids = list(range(tok.vocab_size))
    assert d.feed(ids) + d.flush() == tok.decode(ids)


def test_a_bpe_without_a_byte_level_decoder_has_no_decoder():
    from tokenizers import decoders
    tok = T.BPETokenizer.from_dict(TOKENIZERS["bpe"].to_dict())
    tok._hf.decoder = decoders.Metaspace()
    assert tok.decoder() is None
    prompt, new = tok.encode("the cat"), tok.encode(" sat 日本")
    ts = TextStream(tok, prompt, ())  # the window path
    text = "".join(ts.push(t)[0] for t in new) + ts.flush()
    assert text == tok.decode(prompt + new)[len(tok.decode(prompt)):]


@pytest.mark.parametrize("name", list(TOKENIZERS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_text_stream_sends_the_growth_of_the_decode(name, data):
    tok = TOKENIZERS[name]
    prompt, new = data.draw(_ids(tok)), data.draw(_ids(tok))
    ts = TextStream(tok, prompt, ())
    pieces = [ts.push(t) for t in new]
    sent = "".join(p for p, _ in pieces) + ts.flush()
    before, whole = tok.decode(prompt), tok.decode(prompt + new)
    assert not any(stopped for _, stopped in pieces)
    if whole.startswith(before) and not before.endswith("\ufffd"):
        assert sent == whole[len(before):].rstrip("\ufffd")
    assert not sent.endswith("\ufffd")  # an incomplete character at the end is dropped


def test_text_stream_costs_one_decode_step_a_token():
    """A long answer never re-decodes its text (the decoder sees each id once)."""
    tok = TOKENIZERS["char"]
    fed = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def feed(self, ids):
            fed.append(len(ids))
            return self.inner.feed(ids)

        def push(self, i):
            fed.append(1)
            return self.inner.push(i)

    class Tok:
        def decoder(self):
            return Counting(tok.decoder())

    ids = np.random.default_rng(0).integers(257, tok.vocab_size, 500).tolist()
    ts = TextStream(Tok(), ids[:10], ())
    text = "".join(ts.push(t)[0] for t in ids[10:])
    assert text == tok.decode(ids[10:]) and fed == [10] + [1] * 490


def test_stream_text_decodes_each_id_once():
    """`sllm generate`'s pieces come from the decoder, not from decoding the whole answer
    again per token (which grew with the answer's length)."""
    import sllm
    from sllm.generate import stream_text

    class Counting(T.CharTokenizer):
        calls = 0

        def decode(self, ids):
            Counting.calls += 1
            return super().decode(ids)

    tok = Counting(TOKENIZERS["char"].chars, byte_fallback=True)
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=16, num_layers=1,
                           num_heads=2, ffn_hidden_dim=32, dropout=0.0, max_seq_len=256)
    model = sllm.SLLM(cfg, backend="numpy", seed=0)
    prompt = tok.encode("the cat")
    text = "".join(stream_text(model, tok, prompt, 200, temperature=0))
    assert Counting.calls == 0
    answer = list(sllm.generate.stream(model, prompt, 200, temperature=0))
    assert text == tok.decode(prompt + answer)[len(tok.decode(prompt)):].rstrip("\ufffd")
