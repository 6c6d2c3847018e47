"""Tokenizers: words, characters, byte-level BPE. One vocab.json format for all three.

Every tokenizer has `train(text_or_path, vocab_size)`, `encode`, `decode`, `vocab_size`,
`save(path)` and `to_dict()`; `load(path)` and `from_dict(d)` rebuild any of them from the
`type` field. Word and BPE reserve [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3; the character
tokenizer reserves only [UNK]=0 so its vocabulary matches the text's alphabet.

JavaScript twin: sllm/web/tokenizers.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

import collections
import json
import os
import re
import stat
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import budget
from .errors import DataError
from .fileio import atomic_write_text

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
FORMAT_VERSION = 1

# A word (letters/digits, with inner apostrophes: "don't"), a newline, or one symbol.
_WORD_RE = re.compile(r"\n|\w+(?:['\u2019]\w+)*|[^\w\s]")
# Punctuation that attaches to the token before it, and tokens after which no space goes.
_ATTACH_LEFT = set(".,!?;:)]}%'\u2019\u2026")
_NO_SPACE_AFTER = {"\n", "(", "[", "{", "$"}


def read_text(text_or_path: str | os.PathLike[str], encoding_errors: str = "strict") -> str:
    """The text itself, or the contents of a file when given a path to an existing file.

    Invalid UTF-8 raises DataError naming the file and the byte offset, unless
    encoding_errors is "replace" (or "ignore")."""
    if isinstance(text_or_path, os.PathLike) or (
            isinstance(text_or_path, str) and "\n" not in text_or_path
            and len(text_or_path) < 4096 and os.path.isfile(text_or_path)):
        path = os.fspath(text_or_path)
        with open(path, "rb") as f:
            raw = f.read()
        try:
            return raw.decode("utf-8", errors=encoding_errors)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 at byte offset {e.start} "
                            f"({raw[e.start:e.start + 4]!r}); fix the file or pass "
                            f"--encoding-errors replace") from None
    if not isinstance(text_or_path, str):
        raise DataError(f"expected text or a path, got {type(text_or_path).__name__}")
    return text_or_path


def _require_text(text: str) -> None:
    if not text.strip():
        raise DataError("the corpus is empty (no non-space characters)")


def _shrink_warning(kind: str, asked: int, got: int) -> None:
    warnings.warn(f"{kind} vocab_size {asked} is more than this corpus supports; "
                  f"using {got}", stacklevel=3)


class Tokenizer:
    """Common parts: specials, saving, the vocab.json envelope."""

    kind = ""
    bos_id: int | None = BOS_ID
    eos_id: int | None = EOS_ID
    pad_id: int | None = PAD_ID
    unk_id: int | None = UNK_ID

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        raise NotImplementedError("vocab_size")

    def encode(self, text: str) -> list[int]:
        """Token ids for `text` (no [BOS]/[EOS] added)."""
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids for `text` as a compact numpy array (uint16 when they fit)."""
        raise NotImplementedError("encode_array")

    def decode(self, ids: Iterable[int]) -> str:
        """Text for token ids; [PAD]/[BOS]/[EOS] are dropped, [UNK] stays visible."""
        raise NotImplementedError("decode")

    def unknown_pieces(self, text: str) -> list[str]:
        """The parts of `text` that would encode to [UNK] (for a warning to the user)."""
        return []

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description: {"type": ..., "version": 1, ...}."""
        return {"type": self.kind, "version": FORMAT_VERSION, **self._payload()}

    def _payload(self) -> dict[str, Any]:
        raise NotImplementedError("_payload")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write vocab.json atomically (temp file, fsync, rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    def dtype(self) -> type:
        """The smallest unsigned numpy type that holds every id."""
        return np.uint16 if self.vocab_size <= 65536 else np.uint32

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class WordTokenizer(Tokenizer):
    """The most frequent words of a corpus; words and punctuation are separate tokens,
    newlines are tokens, anything else is [UNK]. decode() re-attaches punctuation."""

    kind = "word"

    def __init__(self, tokens: list[str], lowercase: bool = False):
        if list(tokens[:4]) != list(SPECIALS):
            raise DataError(f"a word vocabulary must start with {SPECIALS}")
        self.tokens = list(tokens)
        self.lowercase = lowercase
        self._ids = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def train(cls, text_or_path: str | os.PathLike[str], vocab_size: int,
              min_frequency: int = 1, lowercase: bool = False,
              encoding_errors: str = "strict") -> WordTokenizer:
        """Keep the vocab_size - 4 most frequent words (ties: alphabetical)."""
        text = read_text(text_or_path, encoding_errors)
        _require_text(text)
        counts = collections.Counter(_WORD_RE.findall(text.lower() if lowercase else text))
        ranked = sorted((w for w, c in counts.items() if c >= min_frequency),
                        key=lambda w: (-counts[w], w))
        room = max(int(vocab_size) - len(SPECIALS), 1)
        if len(ranked) < room:
            _shrink_warning("word", vocab_size, len(ranked) + len(SPECIALS))
        return cls(list(SPECIALS) + ranked[:room], lowercase)

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.tokens)

    def _words(self, text: str) -> list[str]:
        return _WORD_RE.findall(text.lower() if self.lowercase else text)

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids as a uint16/uint32 array; unknown words become [UNK]."""
        get = self._ids.get
        return np.fromiter((get(w, UNK_ID) for w in self._words(text)), dtype=self.dtype())

    def unknown_pieces(self, text: str) -> list[str]:
        """Words of `text` that are not in the vocabulary."""
        return [w for w in self._words(text) if w not in self._ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Words joined by spaces, punctuation re-attached, specials other than [UNK] dropped."""
        out: list[str] = []
        prev = "\n"
        for i in ids:
            i = int(i)
            if i in (PAD_ID, BOS_ID, EOS_ID):
                continue
            tok = self.tokens[i] if 0 <= i < len(self.tokens) else SPECIALS[UNK_ID]
            if out and prev not in _NO_SPACE_AFTER and tok != "\n" and tok[0] not in _ATTACH_LEFT:
                out.append(" ")
            out.append(tok)
            prev = tok
        return "".join(out)

    def _payload(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WordTokenizer:
        """Rebuild from to_dict()."""
        return cls(list(d["tokens"]), bool(d.get("lowercase", False)))


class CharTokenizer(Tokenizer):
    """One token per Unicode character of the training text; id 0 is [UNK]."""

    kind = "char"
    bos_id = eos_id = pad_id = None
    unk_id = 0

    def __init__(self, chars: list[str]):
        if not chars or chars[0] != "[UNK]":
            raise DataError("a char vocabulary must start with [UNK]")
        self.chars = list(chars)
        self._ids = {c: i for i, c in enumerate(self.chars)}
        # Sorted code points let encode_array map a whole text with one searchsorted.
        points = np.array([ord(c) for c in self.chars[1:]], dtype=np.uint32)
        self._order = np.argsort(points)
        self._points = points[self._order]

    @classmethod
    def train(cls, text_or_path: str | os.PathLike[str], vocab_size: int | None = None,
              encoding_errors: str = "strict") -> CharTokenizer:
        """Every distinct character (the vocab_size - 1 most frequent when it is smaller)."""
        text = read_text(text_or_path, encoding_errors)
        _require_text(text)
        counts = collections.Counter(text)
        chars = sorted(counts)
        if vocab_size is not None and vocab_size - 1 < len(chars):
            chars = sorted(sorted(chars, key=lambda c: (-counts[c], c))[:max(vocab_size - 1, 1)])
        elif vocab_size is not None and vocab_size - 1 > len(chars):
            _shrink_warning("char", vocab_size, len(chars) + 1)
        return cls(["[UNK]"] + chars)

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids as an array; characters outside the vocabulary become [UNK] (0)."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        pos = np.searchsorted(self._points, points)
        pos_c = np.minimum(pos, len(self._points) - 1)
        found = self._points[pos_c] == points
        ids = np.where(found, self._order[pos_c] + 1, 0)
        return ids.astype(self.dtype())

    def unknown_pieces(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary."""
        return [c for c in text if c not in self._ids]

    def decode(self, ids: Iterable[int]) -> str:
        """The characters, with [UNK] written out."""
        n = len(self.chars)
        return "".join(self.chars[int(i)] if 0 <= int(i) < n else "[UNK]" for i in ids)

    def _payload(self) -> dict[str, Any]:
        return {"chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        """Rebuild from to_dict()."""
        return cls(list(d["chars"]))


class BPETokenizer(Tokenizer):
    """Byte-level BPE (Hugging Face `tokenizers`): any UTF-8 text round-trips exactly."""

    kind = "bpe"
    min_vocab = 256 + len(SPECIALS)

    def __init__(self, hf: Any, specials: dict[str, int | None] | None = None):
        hf.encode_special_tokens = True  # user text "[PAD]" stays text: exact round trips
        self._hf = hf
        # An imported vocabulary (e.g. GPT-2's) has its specials elsewhere: {"bos": 50256, ...}
        self.specials = _check_specials(specials, self.vocab_size) if specials else None
        if self.specials:
            self.bos_id, self.eos_id = self.specials["bos"], self.specials["eos"]
            self.pad_id, self.unk_id = self.specials["pad"], self.specials["unk"]

    @classmethod
    def train(cls, text_or_path: str | os.PathLike[str], vocab_size: int,
              min_frequency: int = 2, encoding_errors: str = "strict") -> BPETokenizer:
        """Learn merges until vocab_size ids (at least 260: 4 specials + 256 bytes)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers
        if vocab_size < cls.min_vocab:
            raise DataError(f"bpe vocab_size must be at least {cls.min_vocab} "
                            f"(4 specials + 256 bytes), got {vocab_size}")
        text = read_text(text_or_path, encoding_errors)
        _require_text(text)
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=min_frequency,
                                      special_tokens=list(SPECIALS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(_chunks(text), trainer=trainer, length=None)
        tok = cls(hf)
        if tok.vocab_size < vocab_size:
            _shrink_warning("bpe", vocab_size, tok.vocab_size)
        return tok

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return int(self._hf.get_vocab_size(with_added_tokens=True))

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids as an array (encoded line by line in batches, for speed)."""
        lines = text.splitlines(keepends=True) or [text]
        parts: list[np.ndarray] = [np.asarray(e.ids, dtype=self.dtype())
                 for e in self._hf.encode_batch(lines, add_special_tokens=False)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype())

    def decode(self, ids: Iterable[int]) -> str:
        """The text; [PAD]/[BOS]/[EOS] dropped."""
        drop = (self.pad_id, self.bos_id, self.eos_id)
        keep = [int(i) for i in ids if int(i) not in drop]
        return self._hf.decode(keep, skip_special_tokens=False)

    def _payload(self) -> dict[str, Any]:
        specials = {"specials": self.specials} if self.specials else {}
        return {"hf": json.loads(self._hf.to_str()), **specials}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BPETokenizer:
        """Rebuild from to_dict()."""
        from tokenizers import Tokenizer as HFTokenizer
        try:
            hf = HFTokenizer.from_str(json.dumps(d["hf"]))
        except Exception as e:  # noqa: BLE001 - the Rust library raises a bare Exception
            raise DataError(f"corrupt bpe tokenizer description: {e}") from None
        return cls(hf, d.get("specials"))


def _check_specials(specials: Any, vocab_size: int) -> dict[str, int | None]:
    """{"bos", "eos", "pad", "unk"} -> an id in [0, vocab_size) or None, validated."""
    if not isinstance(specials, dict) or set(specials) - {"bos", "eos", "pad", "unk"}:
        raise DataError(f"bpe specials must map bos/eos/pad/unk to ids, got {specials!r}")
    out: dict[str, int | None] = {}
    for key in ("bos", "eos", "pad", "unk"):
        i = specials.get(key)
        if i is not None and (isinstance(i, bool) or not isinstance(i, int)
                              or not 0 <= i < vocab_size):
            raise DataError(f"bpe special {key} id {i!r} is not in [0, {vocab_size})")
        out[key] = i
    return out


def _chunks(text: str, size: int = 1 << 16) -> Iterable[str]:
    """Line-aligned pieces of text for the BPE trainer."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


TOKENIZERS: dict[str, type[Tokenizer]] = {
    "word": WordTokenizer, "char": CharTokenizer, "bpe": BPETokenizer}


def train(kind: str, text_or_path: str | os.PathLike[str], vocab_size: int | None,
          encoding_errors: str = "strict") -> Tokenizer:
    """Train a tokenizer of `kind` ("word", "char" or "bpe"); vocab_size None (char only)
    keeps every character."""
    if kind not in TOKENIZERS:
        raise DataError(f"unknown tokenizer kind {kind!r}; choose one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind].train(text_or_path, vocab_size,  # type: ignore[attr-defined]  # each kind has its own signature
                                  encoding_errors=encoding_errors)


def from_dict(d: Any) -> Tokenizer:
    """Rebuild any tokenizer from its to_dict() (e.g. embedded in a model file); anything
    else is a DataError."""
    if not isinstance(d, dict) or d.get("type") not in TOKENIZERS:
        kind = d.get("type") if isinstance(d, dict) else type(d).__name__
        raise DataError(f"not a tokenizer description (type {kind!r}); "
                        f"expected one of {sorted(TOKENIZERS)}")
    if int(d.get("version", 1)) > FORMAT_VERSION:
        raise DataError(f"tokenizer format version {d['version']} is newer than this sllm "
                        f"supports ({FORMAT_VERSION})")
    try:
        return TOKENIZERS[d["type"]].from_dict(d)  # type: ignore[attr-defined]  # each kind has its own signature
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"corrupt {d['type']} tokenizer description: {e}") from None


def load(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a vocab.json written by `Tokenizer.save`."""
    try:
        with open(path, encoding="utf-8") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise DataError(f"{os.fspath(path)}: not a regular file")
            budget.check_read(path, os.fstat(f.fileno()).st_size, 12, "tokenizer file")
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{os.fspath(path)}: no such tokenizer file") from None
    except IsADirectoryError:
        raise DataError(f"{os.fspath(path)}: is a directory, not a tokenizer file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{os.fspath(path)}: not a tokenizer JSON file ({e})") from None
    return from_dict(data)
