"""Tokenizers: words, characters, byte-level BPE, and SentencePiece pieces with scores
(`spm`, imported from llama2.c's tokenizer.bin or a GGUF "llama" vocabulary, never
trained here). One vocab.json format for all four.

Every tokenizer has `train(text_or_path, vocab_size)`, `encode`, `decode`, `vocab_size`,
`save(path)` and `to_dict()`; `load(path)` and `from_dict(d)` rebuild any of them from the
`type` field. Word and BPE reserve [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3; the character
tokenizer reserves only [UNK]=0 so its vocabulary matches the text's alphabet.

Byte fallback (the default for new word and char tokenizers): 256 byte tokens "<0x00>" ..
"<0xFF>" follow the specials (word: ids 4-259, char: ids 1-256, SentencePiece's names and
place), and whatever the vocabulary lacks is written as its UTF-8 bytes, so
decode(encode(text)) == text for any text and [UNK] is never produced. A run of byte tokens
decodes as one UTF-8 string and takes no implied space on either side, which is how the
word tokenizer also writes whitespace that its spacing rule would not put back (see
WordTokenizer). Tokenizers without it (format version 1) behave exactly as before.

JavaScript twin: sllm/web/tokenizers.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

import collections
import functools
import json
import os
import re
import stat
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import budget
from .detok import ByteDecoder, CharDecoder, Decoder, WordDecoder
from .errors import DataError
from .fileio import atomic_write_text

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
FORMAT_VERSION = 2  # 2: byte fallback; a tokenizer without it is still written as 1
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))

# A word (letters/digits, with inner apostrophes: "don't"), a newline, or one symbol.
_WORD_RE = re.compile(r"\n|\w+(?:['\u2019]\w+)*|[^\w\s]")
# The same units plus the whitespace between them (everything but "\n" is a gap).
_UNIT_RE = re.compile(r"\n|\w+(?:['\u2019]\w+)*|[^\w\s]|[^\S\n]+")
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

    def decoder(self) -> Decoder | None:
        """A fresh sllm.detok.Decoder: decode() one id at a time, each id decoded once;
        None where this tokenizer has none (decode whole lists then)."""
        return None

    def unknown_pieces(self, text: str) -> list[str]:
        """The parts of `text` that would encode to [UNK] (for a warning to the user)."""
        return []

    def token_bytes(self, i: int) -> bytes:
        """The bytes token `i` writes into decoded text: a byte token's one byte, a word's or
        character's UTF-8; b"" for specials (and [UNK]). A word tokenizer's implied spaces
        are not part of any token (see WordTokenizer)."""
        raise NotImplementedError("token_bytes")

    byte_fallback = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description: {"type": ..., "version": 1 or 2 (byte fallback), ...}."""
        version = 2 if self.byte_fallback else 1
        return {"type": self.kind, "version": version, **self._payload()}

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


def _utf8(text: str) -> bytes:
    """UTF-8 of `text`; a lone surrogate (not Unicode text) becomes U+FFFD, as JavaScript's
    TextEncoder writes it."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return re.sub("[\ud800-\udfff]", "\ufffd", text).encode("utf-8")


def _check_byte_tokens(kind: str, tokens: list[str], first: int) -> None:
    if tuple(tokens[first:first + 256]) != BYTE_TOKENS:
        raise DataError(f"a byte-fallback {kind} vocabulary must hold the 256 byte tokens "
                        f"<0x00>..<0xFF> at ids {first}-{first + 255}")


def _space_between(prev: str, tok: str) -> bool:
    """The word tokenizer's spacing rule: does decode() put a space between prev and tok?"""
    return prev not in _NO_SPACE_AFTER and tok != "\n" and tok[0] not in _ATTACH_LEFT


class WordTokenizer(Tokenizer):
    """The most frequent words of a corpus; words and punctuation are separate tokens and
    newlines are tokens. decode() joins them with a space where _space_between says so
    (punctuation re-attached).

    Without byte fallback an unknown word is [UNK] and whitespace the rule does not put
    back is lost. With it, an unknown word is written as its UTF-8 bytes, and so is any
    whitespace that differs from the rule's (two spaces, a tab, a space before "?"); a word
    glued where the rule would put a space ("3.14": "14" after ".") is written as bytes
    too. Byte runs take no implied space on either side, so the text comes back exactly."""

    kind = "word"

    def __init__(self, tokens: list[str], lowercase: bool = False, byte_fallback: bool = False):
        if list(tokens[:4]) != list(SPECIALS):
            raise DataError(f"a word vocabulary must start with {SPECIALS}")
        if byte_fallback:
            _check_byte_tokens("word", tokens, len(SPECIALS))
            if lowercase:
                raise DataError("a lowercased word vocabulary cannot have byte fallback: "
                                "lowercasing loses the text's case")
        self.tokens = list(tokens)
        self.lowercase = lowercase
        self.byte_fallback = byte_fallback
        self._bytes_end = len(SPECIALS) + 256 if byte_fallback else len(SPECIALS)
        self._ids = {t: i for i, t in enumerate(self.tokens)
                     if not len(SPECIALS) <= i < self._bytes_end}

    @classmethod
    def train(cls, text_or_path: str | os.PathLike[str], vocab_size: int,
              min_frequency: int = 1, lowercase: bool = False,
              encoding_errors: str = "strict", byte_fallback: bool | None = None
              ) -> WordTokenizer:
        """Keep the most frequent words (ties: alphabetical) beside the 4 specials and,
        with byte_fallback (default: on unless lowercase), the 256 byte tokens."""
        fallback = not lowercase if byte_fallback is None else byte_fallback
        text = read_text(text_or_path, encoding_errors)
        _require_text(text)
        counts = collections.Counter(_WORD_RE.findall(text.lower() if lowercase else text))
        ranked = sorted((w for w, c in counts.items() if c >= min_frequency),
                        key=lambda w: (-counts[w], w))
        head = list(SPECIALS) + (list(BYTE_TOKENS) if fallback else [])
        room = int(vocab_size) - len(head)
        if fallback and room < 1:
            raise DataError(f"word vocab_size {vocab_size} leaves no room for words beside "
                            f"the 4 specials and 256 byte tokens: use at least {len(head) + 1} "
                            f"(or byte_fallback=False)")
        room = max(room, 1)
        if len(ranked) < room:
            _shrink_warning("word", vocab_size, len(ranked) + len(head))
        return cls(head + ranked[:room], lowercase, fallback)

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.tokens)

    def _words(self, text: str) -> list[str]:
        return _WORD_RE.findall(text.lower() if self.lowercase else text)

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids as a uint16/uint32 array; unknown words become [UNK] (or bytes)."""
        if self.byte_fallback:
            return np.asarray(self._encode_exact(text), dtype=self.dtype())
        get = self._ids.get
        return np.fromiter((get(w, UNK_ID) for w in self._words(text)), dtype=self.dtype())

    def _byte_ids(self, text: str) -> list[int]:
        return [len(SPECIALS) + b for b in _utf8(text)]

    def _encode_exact(self, text: str) -> list[int]:
        """Byte-fallback encoding: decode() gives `text` back (see the class docstring)."""
        ids: list[int] = []
        gap, prev = "", "\n"  # prev as decode() tracks it: "\n" after a byte run
        for unit in _UNIT_RE.findall(text):
            if unit != "\n" and unit[0].isspace():
                gap += unit
                continue
            i = self._ids.get(unit)
            implied = " " if _space_between(prev, unit) else ""
            if i is not None and (gap == implied or gap):
                ids += self._byte_ids(gap) if gap != implied else []
                ids.append(i)
                prev = unit
            else:  # unknown, or glued where the rule would put a space
                ids += self._byte_ids(gap + unit)
                prev = "\n"
            gap = ""
        return ids + self._byte_ids(gap)

    def unknown_pieces(self, text: str) -> list[str]:
        """Words of `text` that are not in the vocabulary ([] with byte fallback: none
        becomes [UNK])."""
        if self.byte_fallback:
            return []
        return [w for w in self._words(text) if w not in self._ids]

    def token_bytes(self, i: int) -> bytes:
        """See Tokenizer.token_bytes."""
        if len(SPECIALS) <= i < self._bytes_end:
            return bytes([i - len(SPECIALS)])
        return b"" if i < len(SPECIALS) else self.tokens[i].encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        """Words joined by the spacing rule, byte runs as UTF-8 (invalid bytes as U+FFFD),
        specials other than [UNK] dropped."""
        d = self.decoder()
        return d.feed(ids) + d.flush()

    def decoder(self) -> WordDecoder:
        """See Tokenizer.decoder."""
        return WordDecoder(self.tokens, len(SPECIALS), self._bytes_end,
                           (PAD_ID, BOS_ID, EOS_ID), _space_between, SPECIALS[UNK_ID])

    def _payload(self) -> dict[str, Any]:
        fallback = {"byte_fallback": True} if self.byte_fallback else {}
        return {"tokens": self.tokens, "lowercase": self.lowercase, **fallback}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WordTokenizer:
        """Rebuild from to_dict()."""
        return cls(list(d["tokens"]), bool(d.get("lowercase", False)),
                   _fallback_flag(d))


def _fallback_flag(d: dict[str, Any]) -> bool:
    flag = d.get("byte_fallback", False)
    if not isinstance(flag, bool):
        raise DataError(f"byte_fallback must be true or false, got {flag!r}")
    return flag


class CharTokenizer(Tokenizer):
    """One token per Unicode character of the training text; id 0 is [UNK]. With byte
    fallback ids 1-256 are the bytes and a character outside the vocabulary is written as
    its UTF-8 bytes; without it, it becomes [UNK]."""

    kind = "char"
    bos_id = eos_id = pad_id = None
    unk_id = 0

    def __init__(self, chars: list[str], byte_fallback: bool = False):
        if not chars or chars[0] != "[UNK]":
            raise DataError("a char vocabulary must start with [UNK]")
        if byte_fallback:
            _check_byte_tokens("char", chars, 1)
        self.chars = list(chars)
        self.byte_fallback = byte_fallback
        self._first = 257 if byte_fallback else 1  # the first character's id
        self._ids = {c: i for i, c in enumerate(self.chars) if i >= self._first or i == 0}
        # Sorted code points let encode_array map a whole text with one searchsorted.
        points = np.array([ord(c) for c in self.chars[self._first:]], dtype=np.uint32)
        self._order = np.argsort(points)
        self._points = points[self._order]

    @classmethod
    def train(cls, text_or_path: str | os.PathLike[str], vocab_size: int | None = None,
              encoding_errors: str = "strict", byte_fallback: bool = True) -> CharTokenizer:
        """Every distinct character (the most frequent ones when vocab_size is smaller),
        after [UNK] and (byte_fallback, the default) the 256 byte tokens."""
        text = read_text(text_or_path, encoding_errors)
        _require_text(text)
        counts = collections.Counter(text)
        chars = sorted(counts)
        head = ["[UNK]"] + (list(BYTE_TOKENS) if byte_fallback else [])
        if byte_fallback and vocab_size is not None and vocab_size <= len(head):
            raise DataError(f"char vocab_size {vocab_size} leaves no room for characters "
                            f"beside [UNK] and 256 byte tokens: use at least {len(head) + 1} "
                            f"(or byte_fallback=False)")
        if vocab_size is not None and vocab_size - len(head) < len(chars):
            keep = max(vocab_size - len(head), 1)
            chars = sorted(sorted(chars, key=lambda c: (-counts[c], c))[:keep])
        elif vocab_size is not None and vocab_size - len(head) > len(chars):
            _shrink_warning("char", vocab_size, len(chars) + len(head))
        return cls(head + chars, byte_fallback)

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids as an array; characters outside the vocabulary become [UNK] (0), or
        their UTF-8 bytes with byte fallback."""
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        pos = np.searchsorted(self._points, points)
        pos_c = np.minimum(pos, max(len(self._points) - 1, 0))
        found = self._points[pos_c] == points if len(self._points) else np.zeros(len(points), bool)
        ids: np.ndarray = np.where(found, self._order[pos_c] + self._first, 0).astype(self.dtype())
        if not self.byte_fallback or found.all():
            return ids
        return self._expand_bytes(ids, points, np.flatnonzero(~found))

    def _expand_bytes(self, ids: np.ndarray, points: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Replace each missing character's [UNK] by its UTF-8 bytes' ids."""
        pieces = [_utf8(chr(p)) for p in points[missing].tolist()]
        counts = np.ones(len(ids), np.int64)
        counts[missing] = [len(b) for b in pieces]
        out = np.repeat(ids, counts)
        starts = np.cumsum(counts) - counts
        for k, b in zip(starts[missing].tolist(), pieces, strict=True):
            out[k:k + len(b)] = np.frombuffer(b, np.uint8).astype(out.dtype) + 1
        return out

    def unknown_pieces(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary ([] with byte fallback)."""
        if self.byte_fallback:
            return []
        return [c for c in text if c not in self._ids]

    def token_bytes(self, i: int) -> bytes:
        """See Tokenizer.token_bytes."""
        if 1 <= i < self._first:
            return bytes([i - 1])
        return b"" if i == 0 else self.chars[i].encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        """The characters, byte runs as UTF-8 (invalid bytes as U+FFFD), [UNK] written out."""
        d = self.decoder()
        return d.feed(ids) + d.flush()

    def decoder(self) -> CharDecoder:
        """See Tokenizer.decoder."""
        return CharDecoder(self.chars, self._first)

    def _payload(self) -> dict[str, Any]:
        fallback = {"byte_fallback": True} if self.byte_fallback else {}
        return {"chars": self.chars, **fallback}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        """Rebuild from to_dict()."""
        return cls(list(d["chars"]), _fallback_flag(d))


class BPETokenizer(Tokenizer):
    """Byte-level BPE (Hugging Face `tokenizers`): any UTF-8 text round-trips exactly."""

    kind = "bpe"
    min_vocab = 256 + len(SPECIALS)

    def __init__(self, hf: Any, specials: dict[str, int | None] | None = None):
        hf.encode_special_tokens = True  # user text "[PAD]" stays text: exact round trips
        self._hf = hf
        self._bytes_of: dict[int, bytes] = {}  # each id's bytes, as the decoder first needs them
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
        # Each merge consumes at least two bytes of the corpus, so more ids than this cannot
        # be learned; asking the tokenizers library for 10^9 aborts the whole process.
        reachable = cls.min_vocab + len(text.encode("utf-8", "surrogatepass"))
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=int(min(vocab_size, reachable)),
                                      min_frequency=min_frequency,
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

    def token_bytes(self, i: int) -> bytes:
        """See Tokenizer.token_bytes (a piece's bytes through GPT-2's byte alphabet)."""
        piece = self._hf.id_to_token(int(i))
        if piece is None or i in (self.pad_id, self.bos_id, self.eos_id, self.unk_id):
            return b""
        table = _gpt2_unbyte()
        if not all(c in table for c in piece):
            return piece.encode("utf-8")
        return bytes(table[c] for c in piece)

    def decode(self, ids: Iterable[int]) -> str:
        """The text; [PAD]/[BOS]/[EOS] dropped."""
        drop = (self.pad_id, self.bos_id, self.eos_id)
        keep = [int(i) for i in ids if int(i) not in drop]
        return self._hf.decode(keep, skip_special_tokens=False)

    def decoder(self) -> ByteDecoder | None:
        """See Tokenizer.decoder: for a byte-level vocabulary (the Hugging Face ByteLevel
        decoder: each piece's bytes through GPT-2's byte alphabet, joined, read as UTF-8);
        None for any other decoder (an imported tokenizer.json may have its own)."""
        if type(self._hf.decoder).__name__ != "ByteLevel":
            return None
        return ByteDecoder(self._piece_after)

    def _piece_after(self, prev: int | None, i: int) -> bytes:
        """The bytes id i writes (any prev): none for [PAD]/[BOS]/[EOS], else its piece
        through the byte alphabet, or the piece's own UTF-8 where a character is outside it
        (an added token), as the ByteLevel decoder does; [UNK] is written out."""
        if i in (self.pad_id, self.bos_id, self.eos_id):
            return b""
        cache = self._bytes_of
        got = cache.get(i)
        if got is None:
            piece = self._hf.id_to_token(i)
            if piece is None:
                return b""
            table = _gpt2_unbyte()
            got = cache[i] = (bytes(table[c] for c in piece) if all(c in table for c in piece)
                              else piece.encode("utf-8"))
        return got

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


class SPMTokenizer(Tokenizer):
    """SentencePiece pieces with scores, encoded as llama2.c's run.c `encode` does (the
    tokenizer of llama2.c's `tokenizer.bin` and of GGUF "llama" vocabularies).

    encode: a " " piece first (SentencePiece's dummy prefix, when add_dummy_prefix and the
    text is not empty), then one piece per character, a character that is no piece as its
    UTF-8 bytes' "<0xXX>" tokens ([UNK] when the vocabulary lacks them; run.c assumes ids
    3-258); then, repeatedly, the adjacent pair whose concatenation is a piece with the
    highest score (the leftmost on ties; scores at or below run.c's -1e10 never merge) is
    merged, until no pair is a piece. run.c rescans every pair per merge; here a heap of
    the current pairs finds the same merge in O(n log n). A piece that occurs twice is
    looked up as its lowest id. decode: run.c's `decode` -- the leading space of a piece
    right after [BOS] is stripped, a "<0xXX>" token is its raw byte (byte runs decode as
    UTF-8, invalid bytes as U+FFFD); [BOS]/[EOS]/[PAD] are dropped, [UNK] stays visible.
    Spaces are " " in the pieces (tokenizer.bin's form; GGUF's U+2581 is converted)."""

    kind = "spm"
    NEVER = -1e10  # run.c's initial best_score: a merge must score above it

    def __init__(self, pieces: list[str], scores: list[float], bos: int | None = 1,
                 eos: int | None = 2, unk: int | None = 0, pad: int | None = None,
                 add_dummy_prefix: bool = True):
        if len(pieces) != len(scores) or not pieces:
            raise DataError(f"an spm vocabulary needs one score per piece, got {len(pieces)} "
                            f"pieces and {len(scores)} scores")
        if not all(isinstance(p, str) for p in pieces):
            raise DataError("spm pieces must be strings")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)
                   for x in scores):
            raise DataError("spm scores must be finite numbers")
        specials = _check_specials({"bos": bos, "eos": eos, "unk": unk, "pad": pad}, len(pieces), "spm")
        self.bos_id, self.eos_id = specials["bos"], specials["eos"]
        self.unk_id, self.pad_id = specials["unk"], specials["pad"]
        if not isinstance(add_dummy_prefix, bool):
            raise DataError(f"add_dummy_prefix must be true or false, got {add_dummy_prefix!r}")
        self.pieces, self.scores = list(pieces), [float(x) for x in scores]
        self.add_dummy_prefix = add_dummy_prefix
        self._ids: dict[str, int] = {}
        for i, p in enumerate(self.pieces):
            self._ids.setdefault(p, i)
        self._byte_of = {i: BYTE_TOKENS.index(p) for i, p in enumerate(self.pieces)
                         if p in _BYTE_INDEX}
        byte_ids = {b: self._ids[t] for t, b in _BYTE_INDEX.items() if t in self._ids}
        self._byte_ids: list[int | None] = [byte_ids.get(b, self.unk_id) for b in range(256)]
        self.byte_fallback = len(byte_ids) == 256

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.pieces)

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids as run.c's encode gives them (no [BOS]/[EOS])."""
        return np.asarray(self._merge(self._initial(text)), dtype=self.dtype())

    def _initial(self, text: str) -> list[int]:
        """One id per character (the dummy prefix first), or its bytes' ids."""
        ids: list[int | None] = []
        for ch in (" " if text and self.add_dummy_prefix else "") + text:
            i = self._ids.get(ch)
            if i is not None:
                ids.append(i)
            else:
                ids.extend(self._byte_ids[b] for b in _utf8(ch))
        return [i for i in ids if i is not None]

    def _merge(self, ids: list[int]) -> list[int]:
        """run.c's merge loop: the best-scoring pair first, the leftmost among equals."""
        import heapq
        n = len(ids)
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int, int]] = []

        def push(i: int) -> None:
            j = nxt[i]
            if i >= 0 and j < n:
                m = self._ids.get(self.pieces[ids[i]] + self.pieces[ids[j]])
                if m is not None and self.scores[m] > self.NEVER:
                    heapq.heappush(heap, (-self.scores[m], i, ids[i], ids[j], m))

        for i in range(n - 1):
            push(i)
        alive = [True] * n
        while heap:
            _, i, a, b, m = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j >= n or ids[i] != a or ids[j] != b:
                continue  # a pair that an earlier merge changed
            ids[i], alive[j], nxt[i] = m, False, nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            push(prv[i])
            push(i)
        return [t for t, keep in zip(ids, alive, strict=True) if keep]

    def token_bytes(self, i: int) -> bytes:
        """See Tokenizer.token_bytes (a byte token's byte; specials write nothing)."""
        if i in self._byte_of:
            return bytes([self._byte_of[i]])
        if i in (self.bos_id, self.eos_id, self.pad_id, self.unk_id):
            return b""
        return _utf8(self.pieces[i])

    def decode(self, ids: Iterable[int]) -> str:
        """run.c's decode (see the class docstring)."""
        d = self.decoder()
        return d.feed(ids) + d.flush()

    def decoder(self) -> ByteDecoder:
        """See Tokenizer.decoder."""
        return ByteDecoder(self._piece_after)

    def _piece_after(self, prev: int | None, i: int) -> bytes:
        """The bytes id i writes after id prev: run.c strips a piece's leading space after
        [BOS]; a byte token is its byte; [BOS]/[EOS]/[PAD] write nothing."""
        if i in self._byte_of:
            return bytes((self._byte_of[i],))
        if i in (self.bos_id, self.eos_id, self.pad_id):
            return b""
        if not 0 <= i < len(self.pieces):
            return b"<unk>"
        piece = self.pieces[i]
        return _utf8(piece[1:] if prev == self.bos_id and piece[:1] == " " else piece)

    def _payload(self) -> dict[str, Any]:
        return {"pieces": self.pieces, "scores": self.scores, "add_dummy_prefix":
                self.add_dummy_prefix, "specials": {"bos": self.bos_id, "eos": self.eos_id,
                                                    "unk": self.unk_id, "pad": self.pad_id}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SPMTokenizer:
        """Rebuild from to_dict()."""
        specials = d.get("specials", {})
        if not isinstance(specials, dict) or set(specials) - {"bos", "eos", "unk", "pad"}:
            raise DataError(f"spm specials must map bos/eos/unk/pad to ids, got {specials!r}")
        return cls(list(d["pieces"]), list(d["scores"]),
                   add_dummy_prefix=d.get("add_dummy_prefix", True), **specials)


_BYTE_INDEX = {t: b for b, t in enumerate(BYTE_TOKENS)}


@functools.cache
def _gpt2_unbyte() -> dict[str, int]:
    """GPT-2's printable character -> byte table (the ByteLevel pre-tokenizer's)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = list(bs)
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _check_specials(specials: Any, vocab_size: int, kind: str = "bpe") -> dict[str, int | None]:
    """{"bos", "eos", "pad", "unk"} -> an id in [0, vocab_size) or None, validated."""
    if not isinstance(specials, dict) or set(specials) - {"bos", "eos", "pad", "unk"}:
        raise DataError(f"{kind} specials must map bos/eos/pad/unk to ids, got {specials!r}")
    out: dict[str, int | None] = {}
    for key in ("bos", "eos", "pad", "unk"):
        i = specials.get(key)
        if i is not None and (isinstance(i, bool) or not isinstance(i, int)
                              or not 0 <= i < vocab_size):
            raise DataError(f"{kind} special {key} id {i!r} is not in [0, {vocab_size})")
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
    "word": WordTokenizer, "char": CharTokenizer, "bpe": BPETokenizer, "spm": SPMTokenizer}
TRAINABLE = ("word", "char", "bpe")  # spm vocabularies are imported (llama2.c, GGUF), not trained


def train(kind: str, text_or_path: str | os.PathLike[str], vocab_size: int | None,
          encoding_errors: str = "strict", byte_fallback: bool = True) -> Tokenizer:
    """Train a tokenizer of `kind` ("word", "char" or "bpe"); vocab_size None (char only)
    keeps every character. byte_fallback (word and char; BPE is byte-level anyway)."""
    if kind not in TRAINABLE:
        raise DataError(f"unknown tokenizer kind {kind!r}; choose one of {sorted(TRAINABLE)}")
    more = {"byte_fallback": byte_fallback} if kind != "bpe" else {}
    return TOKENIZERS[kind].train(text_or_path, vocab_size,  # type: ignore[attr-defined]  # each kind has its own signature
                                  encoding_errors=encoding_errors, **more)


def unknown_report(tok: Tokenizer, ids: Any) -> str | None:
    """"38 of 324 tokens are not in this model's vocabulary ..." when `ids` (the encoding
    of some text) holds [UNK]; None when nothing was unknown (always so with byte
    fallback or byte-level BPE)."""
    ids = np.asarray(ids)
    if tok.unk_id is None or tok.byte_fallback or tok.kind == "bpe" or not len(ids):
        return None
    unknown = int(np.count_nonzero(ids == tok.unk_id))
    if not unknown:
        return None
    return (f"{unknown} of {len(ids)} tokens are not in this model's vocabulary and became "
            f"[UNK] (the model has no byte fallback; a tokenizer trained by this sllm has)")


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
