"""A chat session: turns formatted the way the demo corpus writes dialogues.

The user speaks as `A:` and the model answers as `B:`, one line per turn, the whole
dialogue after a [BOS] (as each corpus document starts). Old turns are dropped when the
dialogue no longer fits in the model's context.

JavaScript twin: sllm/web/sllm.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .corpus import BOT_PREFIX, USER_PREFIX
from .errors import SLLMError
from .generate import check_sampling, encode_prompt, stream_text, warn_unknown


class ContextOverflow(SLLMError, ValueError):
    """The dialogue (or, when trimming, the last user line alone) does not fit the context."""


class ChatSession:
    """Keeps the dialogue so far; reply(text) streams the model's answer."""

    def __init__(self, model: Any, tok: Any, max_new_tokens: int = 48,
                 user_prefix: str = USER_PREFIX, bot_prefix: str = BOT_PREFIX,
                 context_overflow: str = "trim", **sampling: Any):
        check_sampling(max_new_tokens, **sampling)
        if context_overflow not in ("trim", "error"):
            raise ValueError(f"context_overflow must be trim or error, got "
                             f"{context_overflow!r}")
        self.context_overflow = context_overflow
        self.model, self.tok = model, tok
        self.max_new_tokens = max_new_tokens
        self.user_prefix, self.bot_prefix = user_prefix, bot_prefix
        self.sampling = sampling
        self.turns: list[str] = []

    def _prompt(self) -> list[int]:
        """The dialogue's ids with the oldest turns dropped until it fits (trim)."""
        context = self.model.config.max_seq_len
        room = context - min(self.max_new_tokens, context // 2)
        while True:
            text = "\n".join(self.turns + [self.bot_prefix])
            ids = encode_prompt(self.tok, text, warn=False)
            if len(ids) <= room:
                return ids
            if len(self.turns) <= 1 or self.context_overflow == "error":
                what = "the dialogue" if len(self.turns) > 1 else "this line alone"
                self.turns.pop()
                raise ContextOverflow(f"{what} takes {len(ids)} tokens; the context holds "
                                      f"{context} with {context - room} kept for the answer")
            self.turns = self.turns[2:] if len(self.turns) > 2 else self.turns[1:]

    def reply(self, user_text: str) -> Iterator[str]:
        """Add the user's line, then yield the answer's text as it is generated
        (ContextOverflow, raised at once, when it cannot fit; the line is not kept)."""
        warn_unknown(self.tok, user_text)
        self.turns.append(f"{self.user_prefix} {user_text.strip()}")
        return self._answer(self._prompt())

    def _answer(self, prompt: list[int]) -> Iterator[str]:
        pieces: list[str] = []
        for piece in stream_text(self.model, self.tok, prompt, self.max_new_tokens,
                                 stop_at_newline=True, **self.sampling):
            pieces.append(piece)
            yield piece
        self.turns.append(f"{self.bot_prefix} {''.join(pieces).strip()}")
