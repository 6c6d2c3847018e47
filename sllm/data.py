"""Corpus -> token ids (compact numpy, memory-mappable) -> train/validation batches.

Documents are the blocks of text separated by blank lines (a story, a dialogue). Each is
encoded as [BOS] ids [EOS] when the tokenizer has those specials. Two ways to batch:
- stream mode: (B, T) windows at random offsets of the concatenated ids;
- document mode: one document per row, cut to T+1 tokens, padded with [PAD], targets -1.
Batch k of a run depends only on (seed, k), so a resumed run sees the same batches.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DataError
from .fileio import atomic_write
from .tokenizer import PAD_ID, Tokenizer, read_text

_DOC_SPLIT = re.compile(r"\n[ \t]*\n\s*")


def encode_corpus(text: str, tok: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """All token ids of the text and the start offset of each document."""
    docs = [d for d in _DOC_SPLIT.split(text) if d.strip()]
    if not docs:
        raise DataError("the corpus is empty (no non-space characters)")
    bos = [tok.bos_id] if tok.bos_id is not None else []
    eos = [tok.eos_id] if tok.eos_id is not None else []
    sep = "" if eos else "\n\n"  # without an [EOS] the blank line itself marks the end
    dtype = tok.dtype()
    parts = [np.concatenate([np.asarray(bos, dtype), tok.encode_array(d.strip("\n") + sep),
                             np.asarray(eos, dtype)]) for d in docs]
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.concatenate(parts).astype(dtype, copy=False), offsets


@dataclass
class TokenSplit:
    """The ids of one split and the start offset of each of its documents."""

    ids: np.ndarray
    offsets: np.ndarray

    def documents(self) -> list[np.ndarray]:
        """Each document's ids (views, no copies)."""
        ends = np.append(self.offsets[1:], len(self.ids))
        return [self.ids[s:e] for s, e in zip(self.offsets, ends, strict=True)]


class TokenData:
    """Train and validation token ids, with seeded batch sampling."""

    def __init__(self, train: TokenSplit, val: TokenSplit, seq_len: int, batch_size: int,
                 seed: int = 0, documents: bool = False):
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        self.train, self.val = train, val
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.documents = documents
        self._check_length(train, "training")
        if len(val.ids):
            self._check_length(val, "validation")

    def _check_length(self, split: TokenSplit, name: str) -> None:
        need = 2 if self.documents else self.seq_len + 1
        if len(split.ids) < need:
            raise DataError(f"the {name} split has {len(split.ids)} tokens, fewer than "
                            f"seq_len + 1 = {self.seq_len + 1}; use a longer corpus, a "
                            f"smaller --seq-len or a different --val-fraction")

    @classmethod
    def from_text(cls, text: str, tok: Tokenizer, seq_len: int, batch_size: int,
                  val_fraction: float = 0.2, seed: int = 0, documents: bool = False
                  ) -> TokenData:
        """Encode the text and split it: the first (1 - val_fraction) of the tokens train."""
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        ids, offsets = encode_corpus(text, tok)
        train, val = split_ids(ids, offsets, val_fraction)
        return cls(train, val, seq_len, batch_size, seed, documents)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], tok: Tokenizer, seq_len: int,
                  batch_size: int, val_fraction: float = 0.2, seed: int = 0,
                  documents: bool = False, encoding_errors: str = "strict") -> TokenData:
        """from_text on a UTF-8 file (see tokenizer.read_text for encoding errors)."""
        text = read_text(os.fspath(path), encoding_errors)
        return cls.from_text(text, tok, seq_len, batch_size, val_fraction, seed, documents)

    # ---- batches --------------------------------------------------------------------
    def train_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and targets (B, T) for training step `step` (0-based)."""
        rng = np.random.default_rng((self.seed, step))
        if self.documents:
            picks = rng.integers(0, len(self.train.offsets), self.batch_size)
            return self._document_rows(self.train, picks)
        starts = rng.integers(0, len(self.train.ids) - self.seq_len, self.batch_size)
        return self._windows(self.train.ids, starts)

    def val_batches(self, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """`count` fixed validation batches spread evenly over the split (the same at every
        evaluation, so val losses compare)."""
        if not len(self.val.ids) or count < 1:
            return []
        rows = count * self.batch_size
        if self.documents:
            picks = np.linspace(0, len(self.val.offsets) - 1, rows).astype(np.int64)
            pairs = [self._document_rows(self.val, p) for p in picks.reshape(count, -1)]
        else:
            starts = np.linspace(0, len(self.val.ids) - self.seq_len - 1, rows).astype(np.int64)
            pairs = [self._windows(self.val.ids, s) for s in starts.reshape(count, -1)]
        return pairs

    def _windows(self, ids: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        T = self.seq_len
        idx = starts[:, None] + np.arange(T + 1)[None, :]
        chunk = np.asarray(ids[idx], dtype=np.int32)
        return chunk[:, :-1].copy(), chunk[:, 1:].copy()

    def _document_rows(self, split: TokenSplit, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        T = self.seq_len
        x = np.full((len(picks), T), PAD_ID, dtype=np.int32)
        y = np.full((len(picks), T), -1, dtype=np.int32)
        ends = np.append(split.offsets[1:], len(split.ids))
        for row, d in enumerate(picks):
            doc = np.asarray(split.ids[split.offsets[d]:ends[d]][:T + 1], dtype=np.int32)
            n = len(doc) - 1
            x[row, :n], y[row, :n] = doc[:-1], doc[1:]
        return x, y

    @property
    def tokens_per_batch(self) -> int:
        """B * T."""
        return self.batch_size * self.seq_len

    # ---- cache in a run directory -------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the ids as .npy files (atomically) so a resumed run reads the same data."""
        os.makedirs(directory, exist_ok=True)
        for name, arr in self._arrays().items():
            path = os.path.join(directory, f"{name}.npy")
            with atomic_write(path) as f:
                np.save(f, arr)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"train_ids": self.train.ids, "train_offsets": self.train.offsets,
                "val_ids": self.val.ids, "val_offsets": self.val.offsets}

    @classmethod
    def load(cls, directory: str | os.PathLike[str], seq_len: int, batch_size: int,
             seed: int = 0, documents: bool = False) -> TokenData:
        """Memory-map what save() wrote."""
        arrays: dict[str, Any] = {}
        for name in ("train_ids", "train_offsets", "val_ids", "val_offsets"):
            path = os.path.join(directory, f"{name}.npy")
            try:
                arrays[name] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: missing or corrupt token cache ({e})") from None
        return cls(TokenSplit(arrays["train_ids"], arrays["train_offsets"]),
                   TokenSplit(arrays["val_ids"], arrays["val_offsets"]),
                   seq_len, batch_size, seed, documents)


def split_ids(ids: np.ndarray, offsets: np.ndarray, val_fraction: float) -> tuple[TokenSplit, TokenSplit]:
    """Cut at token (1 - val_fraction) * n; a document that straddles the cut is split."""
    cut = int(round(len(ids) * (1.0 - val_fraction)))
    train_offsets = offsets[offsets < cut]
    val_offsets = offsets[offsets >= cut] - cut
    if cut < len(ids) and (not len(val_offsets) or val_offsets[0] != 0):
        val_offsets = np.concatenate([[0], val_offsets]).astype(np.int64)
    return TokenSplit(ids[:cut], train_offsets), TokenSplit(ids[cut:], val_offsets)
