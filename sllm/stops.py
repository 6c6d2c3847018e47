"""Stop strings found in text that arrives piece by piece, in time linear in the text.

The server ends a choice at the first of up to 4 stop strings (serve_api.MAX_STOP, each
at most MAX_STOP_CHARS long). Testing, after every token, whether the text ends with each
prefix of each stop string costs the square of the stop string's length per token; with
one Knuth-Morris-Pratt automaton per stop string every character costs at most two
transitions per stop string, whatever the strings (`steps` counts them, and the tests
bound it). The automaton's state is also the longest end of the text that could still
become a stop string: the text the caller must hold back.
"""
from __future__ import annotations


def _failure(s: str) -> list[int]:
    """KMP failure function: fail[i] = length of the longest proper prefix of s[:i+1] that
    is also its suffix."""
    fail = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return fail


class StopMatcher:
    """Feeds text to one automaton per stop string; reports the first match."""

    def __init__(self, stops: tuple[str, ...]):
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self.stops = stops
        self._fail = [_failure(s) for s in stops]
        self._state = [0] * len(stops)  # characters of each stop string matched at the end
        self.steps = 0  # automaton transitions so far: the work done, <= 2 x chars x stops

    def feed(self, piece: str) -> tuple[int | None, int]:
        """Add `piece`; return (where the earliest-starting stop string completed within
        it starts, as an offset from the piece's start, negative when it began in earlier
        text; None when none did) and the number of characters at the end of the text that
        could still begin a stop string."""
        first: int | None = None
        for j, s in enumerate(self.stops):
            end = self._advance(j, s, piece)
            if end is not None:
                start = end + 1 - len(s)
                first = start if first is None else min(first, start)
        return first, max(self._state, default=0)

    def _advance(self, j: int, s: str, piece: str) -> int | None:
        """Run automaton j over piece; the index in piece where s is first completed."""
        fail, k, steps = self._fail[j], self._state[j], 0
        for i, c in enumerate(piece):
            while k and s[k] != c:
                k = fail[k - 1]
                steps += 1
            steps += 1
            if s[k] == c:
                k += 1
                if k == len(s):
                    self._state[j], self.steps = fail[k - 1], self.steps + steps
                    return i
        self._state[j], self.steps = k, self.steps + steps
        return None
