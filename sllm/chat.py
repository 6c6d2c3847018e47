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
from .generate import check_sampling, encode_prompt, stream_text, warn_unknown


class ChatSession:
    """Keeps the dialogue so far; reply(text) streams the model's answer."""

    def __init__(self, model: Any, tok: Any, max_new_tokens: int = 48,
                 user_prefix: str = USER_PREFIX, bot_prefix: str = BOT_PREFIX, **sampling: Any):
        check_sampling(max_new_tokens, **sampling)
        self.model, self.tok = model, tok
        self.max_new_tokens = max_new_tokens
        self.user_prefix, self.bot_prefix = user_prefix, bot_prefix
        self.sampling = sampling
        self.turns: list[str] = []

    def _prompt(self) -> list[int]:
        room = self.model.config.max_seq_len - self.max_new_tokens
        while True:
            text = "\n".join(self.turns + [self.bot_prefix])
            ids = encode_prompt(self.tok, text, warn=False)
            if len(ids) <= room or len(self.turns) <= 1:
                return ids[-max(room, 1):]
            self.turns = self.turns[2:] if len(self.turns) > 2 else self.turns[1:]

    def reply(self, user_text: str) -> Iterator[str]:
        """Add the user's line, then yield the answer's text as it is generated."""
        warn_unknown(self.tok, user_text)
        self.turns.append(f"{self.user_prefix} {user_text.strip()}")
        pieces: list[str] = []
        for piece in stream_text(self.model, self.tok, self._prompt(), self.max_new_tokens,
                                 stop_at_newline=True, **self.sampling):
            pieces.append(piece)
            yield piece
        self.turns.append(f"{self.bot_prefix} {''.join(pieces).strip()}")
