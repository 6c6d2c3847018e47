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
from typing import Any

from .stops import StopMatcher

_Utf8 = codecs.getincrementaldecoder("utf-8")


class Decoder:
    """Common parts: one incremental UTF-8 decoder (invalid bytes as U+FFFD) for the bytes
    the ids write; subclasses turn ids into bytes or text in `feed`."""

    def __init__(self) -> None:
        # made at the first byte: most texts of a char or word vocabulary have none, and
        # decode() of a few ids (a logprob's context) is a fresh decoder each time
        self._utf8: codecs.IncrementalDecoder | None = None

    def _text(self, data: bytes, final: bool = False) -> str:
        """`data` read as UTF-8 after the bytes before it (invalid bytes as U+FFFD)."""
        if self._utf8 is None:
            self._utf8 = _Utf8("replace")
        return self._utf8.decode(data, final)

    def feed(self, ids: Iterable[int]) -> str:
        """The text `ids` add after everything fed before."""
        raise NotImplementedError("feed")

    def push(self, i: int) -> str:
        """feed() of one id (a subclass may take a shorter way)."""
        return self.feed((i,))

    def flush(self) -> str:
        """The text still held back: an incomplete UTF-8 sequence at the end, as U+FFFD."""
        return "" if self._utf8 is None else self._utf8.decode(b"", final=True)


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
                out.append(self._text(bytes(run), final=True))
                run.clear()
                held = False
            out.append(chars[i] if 0 <= i < n else "[UNK]")
        if run:
            out.append(self._text(bytes(run)))
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
        tokens, n, lo, hi = self.tokens, len(self.tokens), self.bytes_from, self.bytes_end
        dropped, space_between = self.dropped, self.space_between
        prev, started, in_run = self.prev, self.started, self.in_run  # (locals: a hot loop)
        out: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if i in dropped:
                continue
            if lo <= i < hi:
                run.append(i - lo)
                in_run = started = True
                continue
            if in_run:
                out.append(self._text(bytes(run), final=True))
                run.clear()
                in_run, prev = False, "\n"
            tok = tokens[i] if 0 <= i < n else self.unknown
            if started and space_between(prev, tok):
                out.append(" ")
            out.append(tok)
            prev, started = tok, True
        if run:
            out.append(self._text(bytes(run)))
        self.prev, self.started, self.in_run = prev, started, in_run
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
        return self._text(bytes(out))


class TextStream:
    """Turns new token ids into text pieces: each piece is the growth of decode(prompt +
    new ids) (as `sllm generate` prints it), held back while it ends in U+FFFD (an
    incomplete UTF-8 sequence, which the next byte token may complete) or could be the
    start of a stop string; text from a stop string on is cut, and a U+FFFD still held
    when the sequence ends is dropped, as `sllm generate` drops it.

    A tokenizer with an incremental decoder (sllm.detok) decodes each id once: the prompt
    is fed first, then one id a push. For one without (a BPE vocabulary whose decoder is
    not byte-level), the growth is computed over a window of the ids from `anchor` on,
    CONTEXT to 2 x CONTEXT ids already shown plus the new ones (decode is local: spacing
    and byte sequences depend on a few neighbours), so a token costs the same at position
    10 and at position 1,000. Stop strings are found by sllm.stops.StopMatcher, in time
    linear in the text, and only the text held back (shorter than the longest stop
    string) is kept."""

    CONTEXT = 16

    def __init__(self, tok: Any, prompt_ids: list[int], stop: tuple[str, ...]):
        self.tok, self.ids = tok, list(prompt_ids)
        self.stops = StopMatcher(stop)
        self.held = ""  # decoded text not sent yet: it could begin a stop string
        self.unsure = ""  # decoded text ending in U+FFFD: a byte token may complete it
        self.decoder = tok.decoder()
        if self.decoder is not None:
            self.decoder.feed(self.ids)  # the prompt's own text is not sent
        self.shown = len(self.ids)  # (window) ids whose text has been decoded
        self.anchor = max(0, self.shown - self.CONTEXT)  # (window) the first id
        self.before: str | None = None  # (window) decode(ids[anchor:shown]), None until needed

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; return (text that is safe to send now, whether a stop string hit)."""
        self.ids.append(token)
        if self.decoder is not None:
            piece = self.unsure + self.decoder.push(token)
            if piece.endswith("\ufffd"):
                self.unsure = piece
                return "", False
            self.unsure = ""
        else:
            piece = self._window_piece()
        if not piece:
            return "", False
        return self._cut(piece) if self.stops.stops else (piece, False)

    def _window_piece(self) -> str:
        """The text the ids since `shown` add, by decoding the window ("" while it ends
        in U+FFFD)."""
        before = self.before
        if before is None:
            before = self.before = self.tok.decode(self.ids[self.anchor:self.shown])
        after = self.tok.decode(self.ids[self.anchor:])
        if after.endswith("\ufffd") or not after.startswith(before):
            return ""
        self.shown = len(self.ids)
        self.before = after
        if self.shown - self.anchor > 2 * self.CONTEXT:
            self.anchor, self.before = self.shown - self.CONTEXT, None
        return after[len(before):]

    def _cut(self, piece: str) -> tuple[str, bool]:
        """Pass new text through the stop strings: (what is safe to send, whether one hit)."""
        hit, hold = self.stops.feed(piece)
        pending, self.held = self.held + piece, ""
        if hit is not None:  # the held text is where a match can begin, never earlier
            return pending[:max(0, len(pending) - len(piece) + hit)], True
        cut = len(pending) - min(hold, len(pending))
        self.held = pending[cut:]
        return pending[:cut], False

    def flush(self) -> str:
        """Whatever was held back (the sequence ended without a stop string)."""
        rest, self.held = self.held, ""
        return rest
