"""Incremental decoding: text for token ids that arrive one at a time, each id decoded once.

A decoder is a tokenizer's decode() cut into steps: `feed(ids)` returns the text those ids
add, holding back the bytes of a UTF-8 sequence not complete yet (a byte token can split a
character), and `flush()` returns what is still held (U+FFFD for an incomplete sequence,
as decode() writes it). For any split of any id list,

    "".join(d.feed(part) for part in parts) + d.flush() == tok.decode(ids)

The char, word and spm tokenizers' decode() is a fresh decoder's feed(ids) + flush(), so
the two cannot drift apart; the byte-level BPE decoder is checked against the Hugging Face
library's decode by the tests. A streaming server feeds the prompt first (its text is
dropped) and then one token per step: a token costs the same at any position.
"""
from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Sequence

_Utf8 = codecs.getincrementaldecoder("utf-8")


class Decoder:
    """Common parts: one incremental UTF-8 decoder (invalid bytes as U+FFFD) for the bytes
    the ids write; subclasses turn ids into bytes or text in `feed`."""

    def __init__(self) -> None:
        self._utf8 = _Utf8("replace")

    def feed(self, ids: Iterable[int]) -> str:
        """The text `ids` add after everything fed before."""
        raise NotImplementedError("feed")

    def push(self, i: int) -> str:
        """feed() of one id (a subclass may take a shorter way)."""
        return self.feed((i,))

    def flush(self) -> str:
        """The text still held back: an incomplete UTF-8 sequence at the end, as U+FFFD."""
        return self._utf8.decode(b"", final=True)


class CharDecoder(Decoder):
    """CharTokenizer.decode in steps: characters as they are, byte runs as UTF-8."""

    def __init__(self, chars: Sequence[str], first: int):
        super().__init__()
        self.chars, self.first = chars, first  # ids 1..first-1 are the bytes 0..255
        self.held = False  # whether a byte run is open (its last bytes may be held back)

    def feed(self, ids: Iterable[int]) -> str:
        """See Decoder.feed."""
        chars, first, n = self.chars, self.first, len(self.chars)
        out: list[str] = []
        run, held = bytearray(), self.held
        for i in ids:
            i = int(i)
            if 1 <= i < first:
                run.append(i - 1)
                continue
            if run or held:  # the byte run ends here
                out.append(self._utf8.decode(bytes(run), final=True))
                run.clear()
                held = False
            out.append(chars[i] if 0 <= i < n else "[UNK]")
        if run:
            out.append(self._utf8.decode(bytes(run)))
        self.held = held or bool(run)
        return "".join(out)

    def push(self, i: int) -> str:
        """See Decoder.push: a character after a character is itself."""
        if not self.held and self.first <= i < len(self.chars):
            return self.chars[i]
        return self.feed((i,))


class WordDecoder(Decoder):
    """WordTokenizer.decode in steps: words joined by the spacing rule, byte runs as UTF-8
    (no implied space on either side of a run), the given specials dropped."""

    def __init__(self, tokens: Sequence[str], bytes_from: int, bytes_end: int,
                 dropped: tuple[int, ...], space_between: Callable[[str, str], bool],
                 unknown: str):
        super().__init__()
        self.tokens, self.bytes_from, self.bytes_end = tokens, bytes_from, bytes_end
        self.dropped, self.space_between, self.unknown = dropped, space_between, unknown
        self.prev = "\n"  # the last word, "\n" after a byte run (no space follows either)
        self.started = False  # whether any text came before (no space before the first)
        self.in_run = False  # whether a byte run is open (its last bytes may be held back)

    def feed(self, ids: Iterable[int]) -> str:
        """See Decoder.feed."""
        out: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if i in self.dropped:
                continue
            if self.bytes_from <= i < self.bytes_end:
                run.append(i - self.bytes_from)
                self.in_run = self.started = True
                continue
            if self.in_run:
                out.append(self._utf8.decode(bytes(run), final=True))
                run.clear()
                self.in_run, self.prev = False, "\n"
            tok = self.tokens[i] if 0 <= i < len(self.tokens) else self.unknown
            if self.started and self.space_between(self.prev, tok):
                out.append(" ")
            out.append(tok)
            self.prev, self.started = tok, True
        out.append(self._utf8.decode(bytes(run)))
        return "".join(out)


class ByteDecoder(Decoder):
    """A decode that concatenates each id's bytes and reads them as UTF-8: `piece(prev, i)`
    is the bytes id i writes after id prev (None at the start)."""

    def __init__(self, piece: Callable[[int | None, int], bytes]):
        super().__init__()
        self.piece = piece
        self.prev: int | None = None  # the last id fed (spm: a piece after [BOS] differs)

    def feed(self, ids: Iterable[int]) -> str:
        """See Decoder.feed."""
        out = bytearray()
        prev, piece = self.prev, self.piece
        for i in ids:
            i = int(i)
            out += piece(prev, i)
            prev = i
        self.prev = prev
        return self._utf8.decode(bytes(out))
