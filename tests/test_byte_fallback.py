"""Byte fallback: word and char tokenizers write what their vocabulary lacks as UTF-8 bytes,
so decode(encode(text)) == text for any text (Python, and the JavaScript twin under Node);
tokenizers without it load and behave as before, and the commands that meet unknown text
with such a model say how much of it was unknown."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from node_js import run_node, why_no_node
from twins import JAPANESE, ODD_TEXT

import sllm
from sllm import tokenizer as T
from sllm.corpus import generate_corpus

CORPUS = generate_corpus(20_000, seed=1)
WORD = T.WordTokenizer.train(CORPUS, 600)
CHAR = T.CharTokenizer.train(CORPUS)
AWKWARD = [ODD_TEXT, JAPANESE, "", " ", "\n", "  \n \t", "A: Do you have a pet?",
           "3.14 e.g. x.y (a) [ b ] $5 50 % don't 'quoted' A : B ?!", "Zyx Qwv  zyzzyva\t",
           "\r\n\r\n", "\ufeffBOM first", "emoji 🙂👍🏽 and combining e\u0301", "\x00\x7f\x80"]
# Any Unicode text: every code point but lone surrogates (not text; see _utf8).
ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=60)
# Text made mostly of the vocabulary's words, punctuation and odd spacing: the paths where
# known words meet the spacing rule.
PIECE_LIST = ["the", "The", "a", "pet", "?", ".", ",", "(", ")", ":", "'", "\n",
                          " ", "  ", "\t", "3", "14", "zyx", "é", "日本", "$", "…"]
PIECES = st.sampled_from(PIECE_LIST)
WORDY_TEXT = st.lists(PIECES, max_size=30).map("".join)


@pytest.mark.parametrize("tok", [WORD, CHAR], ids=["word", "char"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(ANY_TEXT, WORDY_TEXT))
def test_any_text_round_trips(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert T.UNK_ID not in ids if tok is WORD else 0 not in ids
    assert tok.unknown_pieces(text) == []


@pytest.mark.parametrize("tok", [WORD, CHAR], ids=["word", "char"])
def test_awkward_texts_round_trip_and_known_text_costs_no_bytes(tok):
    for text in AWKWARD:
        assert tok.decode(tok.encode(text)) == text, text
    words = [w for w in WORD.tokens[260:] if w.isalpha()][:12]
    plain = "A: " + " ".join(words) + "?\nB: " + ", ".join(words[:3]) + ".\n"
    assert all(i >= 260 if tok is WORD else i >= 257 for i in tok.encode(plain))


def test_unknown_word_is_its_bytes_with_explicit_spaces():
    ids = WORD.encode("I saw Zyx today")
    run = [WORD.token_bytes(i) for i in ids if 4 <= i < 260]
    assert b"".join(run) == b" Zyx "  # a byte run takes no implied space: both are bytes
    assert WORD.decode(ids) == "I saw Zyx today"


def test_token_bytes_is_what_decode_writes():
    for tok in (WORD, CHAR):
        first = 4 if tok is WORD else 1
        assert [tok.token_bytes(first + b) for b in (0, 65, 255)] == [b"\x00", b"A", b"\xff"]
        assert tok.token_bytes(first + 256) == tok.decode([first + 256]).encode("utf-8")
    assert WORD.token_bytes(T.BOS_ID) == b"" and CHAR.token_bytes(0) == b""


def test_vocabulary_layout_and_sizes():
    assert WORD.tokens[4:260] == list(T.BYTE_TOKENS) and WORD.vocab_size == 600
    assert CHAR.chars[1:257] == list(T.BYTE_TOKENS)
    assert CHAR.vocab_size == 257 + len(set(CORPUS))
    with pytest.raises(sllm.DataError, match="vocab_size 100 leaves no room.*at least 261"):
        T.WordTokenizer.train(CORPUS, 100)
    with pytest.raises(sllm.DataError, match="vocab_size 257 leaves no room.*at least 258"):
        T.CharTokenizer.train(CORPUS, 257)
    assert T.CharTokenizer.train(CORPUS, 260).vocab_size == 260  # [UNK], bytes, 3 characters
    assert not T.WordTokenizer.train(CORPUS, 600, lowercase=True).byte_fallback
    with pytest.raises(sllm.DataError, match="lowercase"):
        T.WordTokenizer.train(CORPUS, 600, lowercase=True, byte_fallback=True)


def test_bad_byte_fallback_descriptions_are_refused():
    d = WORD.to_dict()
    for change, message in [({"byte_fallback": "yes"}, "true or false"),
                            ({"tokens": d["tokens"][:4] + d["tokens"][5:]}, "256 byte tokens"),
                            ({"version": 3}, "newer than this sllm")]:
        with pytest.raises(sllm.DataError, match=message):
            T.from_dict({**d, **change})
    with pytest.raises(sllm.DataError, match="256 byte tokens"):
        T.from_dict({**CHAR.to_dict(), "chars": ["[UNK]", "a"]})


def test_tokenizers_without_byte_fallback_behave_as_before():
    """A version-1 description (as every model file before byte fallback holds) loads as
    it was: unknown words are [UNK], spacing normalized, the same ids."""
    old_word = {"type": "word", "version": 1, "lowercase": False,
                "tokens": ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "the", ".", "cat", "\n"]}
    tok = T.from_dict(old_word)
    assert tok.encode("the  cat zebra.\n") == [4, 6, 1, 5, 7]
    assert tok.decode([4, 6, 1, 5, 7]) == "the cat [UNK].\n"
    assert tok.to_dict() == old_word and tok.unknown_pieces("a cat") == ["a"]
    old_char = {"type": "char", "version": 1, "chars": ["[UNK]", "a", "b"]}
    char = T.from_dict(old_char)
    assert char.encode("abz") == [1, 2, 0] and char.decode([1, 2, 0]) == "ab[UNK]"
    assert char.to_dict() == old_char


def test_unknown_report_counts_unknown_tokens():
    old = T.WordTokenizer.train(CORPUS, 400, byte_fallback=False)
    text = "The pirate saw a kraken near the galleon ."
    ids = old.encode(text)
    unknown = sum(1 for i in ids if i == T.UNK_ID)
    assert unknown >= 3
    assert T.unknown_report(old, ids).startswith(
        f"{unknown} of {len(ids)} tokens are not in this model's vocabulary")
    assert T.unknown_report(WORD, WORD.encode(text)) is None


def _tiny_model(tok, path):
    model = sllm.SLLM({"vocabSize": tok.vocab_size, "embeddingDim": 16, "numLayers": 1,
                       "numHeads": 2, "ffnHiddenDim": 32, "maxSeqLen": 32}, backend="numpy")
    model.tokenizer = tok.to_dict()
    model.save(path)
    return path


def test_eval_and_init_from_say_how_much_was_unknown(tmp_path):
    from typer.testing import CliRunner

    from sllm.cli import app
    old = T.WordTokenizer.train(CORPUS, 300, byte_fallback=False)
    model = _tiny_model(old, tmp_path / "old.sllm")
    story = tmp_path / "pirate.txt"
    story.write_text("The pirate captain sailed the galleon to the kraken's reef.\n" * 40,
                     encoding="utf-8")
    ids = old.encode(story.read_text(encoding="utf-8"))
    expected = f"{ids.count(T.UNK_ID)} of {len(ids)} tokens are not in this model's vocabulary"
    result = CliRunner().invoke(app, ["eval", str(model), "--corpus", str(story),
                                      "--backend", "numpy"])
    assert result.exit_code == 0, result.output
    assert expected in result.output
    with pytest.warns(UserWarning, match="tokens are not in this model's vocabulary"):
        sllm.train.prepare(sllm.train_config.TrainConfig(
            out=str(tmp_path / "run"), corpus=str(story), init_from=str(model), steps=1,
            batch_size=2, seq_len=16, backend="numpy"), progress=False)
    fresh = _tiny_model(WORD, tmp_path / "new.sllm")
    result = CliRunner().invoke(app, ["eval", str(fresh), "--corpus", str(story),
                                      "--backend", "numpy"])
    assert result.exit_code == 0 and "vocabulary" not in result.output


# ---- the JavaScript twin ----------------------------------------------------------------
def _random_texts(n: int) -> list[str]:
    """Seeded texts for the twin: code points from all of Unicode (no surrogates), and
    mixes of the vocabulary's words with odd spacing."""
    rng = np.random.default_rng(7)
    out = []
    for k in range(n):
        if k % 2:
            out.append("".join(rng.choice(PIECE_LIST, rng.integers(0, 30))))
            continue
        size = rng.integers(0, 40)  # half from the busy start of the BMP, half anywhere
        points = np.where(rng.random(size) < 0.5, rng.integers(0, 0x3000, size),
                          rng.integers(0, 0x110000, size))
        out.append("".join(chr(p) for p in points if not 0xD800 <= p < 0xE000))
    return out


def test_javascript_twin_round_trips_as_python():
    reason = why_no_node()
    if reason:
        if os.environ.get("SLLM_REQUIRE_NODE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    samples = list(AWKWARD) + _random_texts(150)
    toks = {"word": WORD, "char": CHAR}
    got = run_node("""
const out = {};
for (const [name, d] of Object.entries(args[0])) {
  const t = web.tokenizers.tokenizerFromDict(d);
  out[name] = args[1].map((s) => { const ids = t.encode(s);
    return [ids, t.decode(ids), Array.from(t.tokenBytes(ids[0] ?? 0))]; });
}
out.report = web.tokenizers.unknownReport(web.tokenizers.tokenizerFromDict(args[2]), args[3]);
return out;
""", {k: t.to_dict() for k, t in toks.items()}, samples,
        T.WordTokenizer.train(CORPUS, 300, byte_fallback=False).to_dict(), [1, 5, 1, 9])
    for name, tok in toks.items():
        for sample, (ids, text, first) in zip(samples, got[name], strict=True):
            assert ids == tok.encode(sample), (name, sample)
            assert text == sample, (name, sample)
            assert first == list(tok.token_bytes(ids[0] if ids else 0))
    assert got["report"].startswith("2 of 4 tokens are not in this model's vocabulary")


def test_javascript_decodes_invalid_bytes_as_python():
    if why_no_node():
        pytest.skip(why_no_node())
    rng = np.random.default_rng(0)
    runs = [rng.integers(4, 260, rng.integers(1, 12)).tolist() for _ in range(200)]
    runs += [[4 + 0xEF, 4 + 0xBB, 4 + 0xBF], [4 + 0xF0, 4 + 0x9F, 4 + 0x98], [4 + 0xC0, 4 + 0x80]]
    got = run_node("""
const t = web.tokenizers.tokenizerFromDict(args[0]);
return args[1].map((ids) => t.decode(ids));
""", WORD.to_dict(), runs)
    assert got == [WORD.decode(r) for r in runs]
    assert json.dumps(got)  # plain strings
