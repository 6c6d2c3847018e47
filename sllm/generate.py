"""Sampling with a KV cache: temperature, top-k, top-p, a seed, a stop token.

JavaScript twin: sllm/web/sllm.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import validate as V


def check_sampling(max_new_tokens: Any = 0, temperature: Any = 1.0, top_k: Any = None,
                   top_p: Any = None, seed: Any = None) -> None:
    """Refuse sampling settings outside their range (ConfigError naming the option)."""
    V.check_int("max_tokens", max_new_tokens, 0)
    V.check_number("temperature", temperature, 0.0, 1e6)
    V.check_int("top_k", top_k, 1, optional=True)
    V.check_number("top_p", top_p, 0.0, 1.0, lo_open=True, optional=True)
    V.check_int("seed", seed, 0, 2**63 - 1, optional=True)


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None) -> int:
    """One token id from a (V,) row of logits. temperature 0 means greedy."""
    z = np.asarray(logits, dtype=np.float64)
    if temperature <= 0:
        return int(np.argmax(z))
    z = z / temperature
    if top_k is not None and 0 < top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p is not None and 0 < top_p < 1:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        cut = int(np.searchsorted(cumulative, top_p)) + 1  # smallest set reaching top_p
        keep = np.zeros_like(probs, dtype=bool)
        keep[order[:cut]] = True
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def stream(model: Any, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           eos_id: int | None = None) -> Iterator[int]:
    """Yield new token ids one at a time. When the context fills up, the oldest tokens
    are dropped (with a warning) and the cache is rebuilt from the newest half. The
    settings are checked here, before the first token is asked for."""
    check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
    ids = [int(t) for t in np.asarray(prompt_ids).reshape(-1)]
    if not ids:
        raise ValueError("the prompt must contain at least one token id")
    return _stream(model, ids, max_new_tokens, temperature, top_k, top_p, seed, eos_id)


def _stream(model: Any, ids: list[int], max_new_tokens: int, temperature: float,
            top_k: int | None, top_p: float | None, seed: int | None,
            eos_id: int | None) -> Iterator[int]:
    limit = model.config.max_seq_len
    if len(ids) > limit:
        warnings.warn(f"prompt of {len(ids)} tokens truncated to the last {limit} "
                      f"(max_seq_len)", stacklevel=2)
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    cache = model.new_cache(1)
    try:
        context = ids[-limit:]
        logits = model.decode(np.array([context]), cache)[0]
        for _ in range(max_new_tokens):
            token = sample_next(logits, rng, temperature, top_k, top_p)
            yield token
            if eos_id is not None and token == eos_id:
                return
            context.append(token)
            if cache.pos >= limit:
                warnings.warn("context full: dropping the oldest tokens", stacklevel=2)
                context = context[-(limit // 2 + 1):]
                cache.pos = 0
                logits = model.decode(np.array([context]), cache)[0]
            else:
                logits = model.decode(np.array([[token]]), cache)[0]
    finally:  # also on [EOS] and when the caller stops early: backend memory is not GC'd
        cache.release()
        model.training = was_training


def generate(model: Any, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             eos_id: int | None = None, on_token: Callable[[int], None] | None = None
             ) -> list[int]:
    """prompt_ids + up to max_new_tokens sampled ids; on_token is called with each new id."""
    out = [int(t) for t in np.asarray(prompt_ids).reshape(-1)]
    for token in stream(model, out, max_new_tokens, temperature, top_k, top_p, seed, eos_id):
        out.append(token)
        if on_token is not None:
            on_token(token)
    return out


def warn_unknown(tok: Any, text: str) -> None:
    """Warn about the words or characters of `text` that will be encoded as [UNK]."""
    unknown = tok.unknown_pieces(text)
    if unknown:
        shown = ", ".join(repr(u) for u in dict.fromkeys(unknown))
        warnings.warn(f"not in the vocabulary, encoded as [UNK]: {shown}", stacklevel=3)


def encode_prompt(tok: Any, text: str, warn: bool = True) -> list[int]:
    """[BOS] (when the tokenizer has one) + the prompt's ids; warns (unless warn=False)
    about words or characters that are not in the vocabulary (they become [UNK])."""
    if warn:
        warn_unknown(tok, text)
    bos = [tok.bos_id] if tok.bos_id is not None else []
    ids = bos + tok.encode(text)
    if not ids:
        raise ValueError("the prompt is empty and the tokenizer has no [BOS] to start from")
    return ids


def stream_text(model: Any, tok: Any, prompt_ids: list[int], max_new_tokens: int,
                stop_at_newline: bool = False, **sampling: Any) -> Iterator[str]:
    """Yield the generated text piece by piece as tokens arrive. Stops at [EOS], after
    max_new_tokens, or (stop_at_newline) at the end of the first generated line.

    Each piece is the growth of decode(prompt + new ids), held back while it ends in an
    incomplete UTF-8 sequence (a byte-level token can split a character)."""
    ids = list(prompt_ids)
    shown = tok.decode(ids)
    for token in stream(model, ids, max_new_tokens, eos_id=tok.eos_id, **sampling):
        if token == tok.eos_id:
            return
        ids.append(token)
        text = tok.decode(ids)
        if text.endswith("\ufffd") or not text.startswith(shown):
            continue
        piece, shown = text[len(shown):], text
        if stop_at_newline and "\n" in piece:
            yield piece[:piece.index("\n")]
            return
        if piece:
            yield piece
