"""Tokenizers: round trips, specials, unknown words, Japanese with BPE, save/load, errors."""
import json

import pytest

import sllm
from sllm import tokenizer as T

ENGLISH = ("Hello, world! It's a fine day (really). The cat sat on the mat; "
           "the dog didn't.\nA: How are you?\nB: I am fine, thank you.\n") * 3
JAPANESE = "こんにちは、世界。今日はいい天気ですね！猫が好きです。\n日本語の文章を学習します。" * 5


def test_word_round_trip_and_punctuation():
    tok = T.WordTokenizer.train(ENGLISH, 40, byte_fallback=False)
    text = "Hello, world! It's a fine day (really).\nA: How are you?"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("Hello,")[1] == tok.tokens.index(",")


def test_word_specials_and_frequency_order():
    tok = T.WordTokenizer.train("b b b a a c", 10, byte_fallback=False)
    assert tok.tokens[:4] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    assert tok.tokens[4:] == ["b", "a", "c"]
    small = T.WordTokenizer.train("b b b a a c", 6, byte_fallback=False)
    assert small.vocab_size == 6 and small.encode("c") == [T.UNK_ID]


def test_word_unknown_words_are_unk_and_visible():
    tok = T.WordTokenizer.train(ENGLISH, 40, byte_fallback=False)
    ids = tok.encode("Hello zebra!")
    assert ids[1] == T.UNK_ID
    assert tok.decode(ids) == "Hello [UNK]!"
    assert tok.unknown_pieces("Hello zebra!") == ["zebra"]


def test_decode_drops_pad_bos_eos():
    tok = T.WordTokenizer.train(ENGLISH, 40, byte_fallback=False)
    ids = [T.BOS_ID] + tok.encode("Hello, world!") + [T.EOS_ID, T.PAD_ID]
    assert tok.decode(ids) == "Hello, world!"


def test_vocab_size_larger_than_corpus_warns_and_shrinks():
    with pytest.warns(UserWarning, match="more than this corpus supports; using 7"):
        tok = T.WordTokenizer.train("one two three", 50, byte_fallback=False)
    assert tok.vocab_size == 7


def test_char_round_trip_and_unknown():
    tok = T.CharTokenizer.train("hello world\n", byte_fallback=False)
    assert tok.decode(tok.encode("hello\nworld")) == "hello\nworld"
    assert tok.encode("hz") == [tok.chars.index("h"), 0]
    assert tok.decode(tok.encode("hz")) == "h[UNK]"
    assert tok.vocab_size == len(set("hello world\n")) + 1


def test_char_vocab_size_keeps_most_frequent():
    tok = T.CharTokenizer.train("aaaabbbc", 3, byte_fallback=False)
    assert tok.chars == ["[UNK]", "a", "b"]


def test_bpe_round_trips_japanese_and_any_utf8():
    tok = T.BPETokenizer.train(JAPANESE + ENGLISH, 330)
    for text in (JAPANESE, ENGLISH, "未知の漢字：鬱 🎉 emoji, tabs\tand  double  spaces\r\n",
                 "Ünïcödé — “quotes” ½", "literal specials: [PAD] [UNK] [BOS] [EOS]"):
        assert tok.decode(tok.encode(text)) == text
    reloaded = T.from_dict(tok.to_dict())  # the setting survives a save
    assert 0 not in reloaded.encode("x[PAD]y")
    assert tok.vocab_size == 330
    # merges happened: Japanese takes fewer tokens than its UTF-8 bytes
    assert len(tok.encode(JAPANESE)) < len(JAPANESE.encode("utf-8")) / 2


def test_bpe_specials_and_minimum_size():
    tok = T.BPETokenizer.train(ENGLISH, 300)
    assert [tok._hf.token_to_id(s) for s in T.SPECIALS] == [0, 1, 2, 3]
    with pytest.raises(sllm.DataError, match="at least 260"):
        T.BPETokenizer.train(ENGLISH, 100)


@pytest.mark.parametrize("kind,size,fallback", [("word", 30, False), ("word", 300, True),
                                               ("char", None, False), ("char", None, True),
                                               ("bpe", 300, False)])
def test_save_load_and_dict_round_trip(tmp_path, kind, size, fallback):
    tok = T.train(kind, ENGLISH + JAPANESE, size, byte_fallback=fallback)
    path = tmp_path / "vocab.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    # a tokenizer without byte fallback is written exactly as before (version 1)
    assert data["type"] == kind and data["version"] == (2 if fallback else 1)
    assert data.get("byte_fallback", False) is fallback
    again = T.load(path)
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
    text = "Hello, world! How are you?"
    assert again.encode(text) == tok.encode(text)
    assert T.from_dict(tok.to_dict()).encode(text) == tok.encode(text)


def test_train_from_path_and_bad_utf8(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text(ENGLISH, encoding="utf-8")
    assert T.WordTokenizer.train(good, 20, byte_fallback=False).vocab_size == 20
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello world \xff\xfe more text")
    with pytest.raises(sllm.DataError, match=r"bad.txt: not valid UTF-8 at byte offset 12"):
        T.WordTokenizer.train(bad, 50)
    tok = T.WordTokenizer.train(bad, 9, encoding_errors="replace", byte_fallback=False)
    assert "\ufffd" in tok.tokens


def test_empty_corpus_is_an_error():
    for kind in ("word", "char", "bpe"):
        with pytest.raises(sllm.DataError, match="empty"):
            T.train(kind, "  \n\t ", 300)


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(sllm.DataError, match="no such tokenizer file"):
        T.load(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(sllm.DataError, match="not a tokenizer JSON"):
        T.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"type": "magic"}')
    with pytest.raises(sllm.DataError, match="type 'magic'"):
        T.load(tmp_path / "y.json")
    (tmp_path / "z.json").write_text('{"type": "word", "tokens": ["a"]}')
    with pytest.raises(sllm.DataError, match="must start with"):
        T.load(tmp_path / "z.json")
    with pytest.raises(sllm.DataError, match="unknown tokenizer kind"):
        T.train("sentencepiece", "text", 10)
