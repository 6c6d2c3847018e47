"""Data: corpus encoding, splits, batches, determinism, document mode, the token cache."""
import numpy as np
import pytest

import sllm
from sllm import tokenizer as T
from sllm.corpus import generate_corpus
from sllm.data import TokenData, encode_corpus

TEXT = generate_corpus(40_000, seed=3)


@pytest.fixture(scope="module")
def tok():
    return T.WordTokenizer.train(TEXT, 2000)


def test_documents_are_bos_text_eos(tok):
    ids, offsets = encode_corpus("zzz two\n\n\nthree\n", tok)
    assert ids.dtype == np.uint16
    docs = np.split(ids, offsets[1:])
    assert [d[0] for d in docs] == [T.BOS_ID, T.BOS_ID]
    assert [d[-1] for d in docs] == [T.EOS_ID, T.EOS_ID]
    assert [tok.decode(d) for d in docs] == ["zzz two", "three"]  # zzz: byte fallback


def test_documents_without_byte_fallback_keep_unk():
    tok = T.WordTokenizer.train(TEXT, 2000, byte_fallback=False)
    ids, offsets = encode_corpus("zzz two\n\n\nthree\n", tok)
    assert [tok.decode(d) for d in np.split(ids, offsets[1:])] == ["[UNK] two", "three"]


def test_char_tokenizer_keeps_the_text():
    tok = T.CharTokenizer.train(TEXT)
    ids, _ = encode_corpus(TEXT, tok)
    assert tok.decode(ids) == TEXT.rstrip("\n") + "\n\n"  # each document ends in a blank line


def test_split_is_80_20_by_default(tok):
    data = TokenData.from_text(TEXT, tok, seq_len=16, batch_size=4)
    n = len(data.train.ids) + len(data.val.ids)
    assert abs(len(data.val.ids) / n - 0.2) < 1e-3
    data = TokenData.from_text(TEXT, tok, seq_len=16, batch_size=4, val_fraction=0.1)
    assert abs(len(data.val.ids) / n - 0.1) < 1e-3


def test_batches_are_shifted_windows_and_deterministic(tok):
    a = TokenData.from_text(TEXT, tok, seq_len=16, batch_size=4, seed=7)
    b = TokenData.from_text(TEXT, tok, seq_len=16, batch_size=4, seed=7)
    c = TokenData.from_text(TEXT, tok, seq_len=16, batch_size=4, seed=8)
    x, y = a.train_batch(5)
    assert x.shape == y.shape == (4, 16)
    assert np.array_equal(x[:, 1:], y[:, :-1])
    assert all(np.array_equal(p, q) for p, q in zip(a.train_batch(5), b.train_batch(5), strict=True))
    assert not np.array_equal(a.train_batch(5)[0], a.train_batch(6)[0])
    assert not np.array_equal(a.train_batch(5)[0], c.train_batch(5)[0])
    v1, v2 = a.val_batches(3), a.val_batches(3)
    assert len(v1) == 3 and all(np.array_equal(p[0], q[0]) for p, q in zip(v1, v2, strict=True))


def test_document_mode_pads_and_masks(tok):
    data = TokenData.from_text(TEXT, tok, seq_len=64, batch_size=8, documents=True)
    x, y = data.train_batch(0)
    assert (x[:, 0] == T.BOS_ID).all()
    pad = x == T.PAD_ID
    assert pad.any() and (y[pad] == -1).all()
    # a target is the next input token wherever both exist
    inside = (y[:, :-1] >= 0) & (y[:, 1:] >= 0)
    assert np.array_equal(x[:, 1:][inside], y[:, :-1][inside])


def test_cache_round_trip_memory_mapped(tmp_path, tok):
    data = TokenData.from_text(TEXT, tok, seq_len=16, batch_size=4)
    data.save(tmp_path)
    again = TokenData.load(tmp_path, 16, 4)
    assert isinstance(again.train.ids, np.memmap)
    assert np.array_equal(again.train_batch(3)[0], data.train_batch(3)[0])
    (tmp_path / "val_ids.npy").write_bytes(b"garbage")
    with pytest.raises(sllm.DataError, match="corrupt token cache"):
        TokenData.load(tmp_path, 16, 4)


def test_corpus_shorter_than_seq_len(tok):
    with pytest.raises(sllm.DataError, match="fewer than seq_len \\+ 1 = 65"):
        TokenData.from_text("A: hello there.\n", tok, seq_len=64, batch_size=2)


def test_empty_corpus(tok):
    with pytest.raises(sllm.DataError, match="empty"):
        TokenData.from_text("\n\n  \n", tok, seq_len=4, batch_size=2)


def test_bad_val_fraction(tok):
    with pytest.raises(sllm.DataError, match="val_fraction"):
        TokenData.from_text(TEXT, tok, seq_len=4, batch_size=2, val_fraction=1.0)
