"""Generation with a KV cache: the prompt's prefill, then one token at a time drawn by
sllm.sampler (temperature, top-k, top-p, min-p, penalties, logit bias, a seed) and, when
asked, held to a grammar by sllm.constrain (a JSON schema, a regex, a choice of strings).

JavaScript twin: sllm/web/sllm.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from . import validate
from .detok import TextStream
from .sampler import Choice, Sampler, SamplingParams, sample_next

__all__ = ["check_sampling", "sample_next", "stream", "stream_choices", "generate",
           "encode_prompt", "stream_text", "warn_unknown", "sampling_params"]


def sampling_params(temperature: Any = 1.0, top_k: Any = None, top_p: Any = None,
                    seed: Any = None, min_p: Any = None, frequency_penalty: Any = 0.0,
                    presence_penalty: Any = 0.0, repetition_penalty: Any = 1.0,
                    logit_bias: Mapping[int, float] | None = None, logprobs: Any = None,
                    vocab_size: int | None = None) -> SamplingParams:
    """The checked SamplingParams (ConfigError naming the first bad setting)."""
    bias = tuple(sorted((logit_bias or {}).items()))
    return SamplingParams(temperature, top_k, top_p, min_p, seed, frequency_penalty,
                          presence_penalty, repetition_penalty, bias, logprobs
                          ).check(vocab_size)


def check_sampling(max_new_tokens: Any = 0, temperature: Any = 1.0, top_k: Any = None,
                   top_p: Any = None, seed: Any = None, **more: Any) -> None:
    """Refuse sampling settings outside their range (ConfigError naming the option)."""
    validate.check_int("max_tokens", max_new_tokens, 0)
    sampling_params(temperature, top_k, top_p, seed, **more)


def stream(model: Any, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           eos_id: int | None = None, constraint: Any = None, **more: Any) -> Iterator[int]:
    """Yield new token ids one at a time. When the context fills up, the oldest tokens
    are dropped (with a warning) and the cache is rebuilt from the newest half. The
    settings are checked here, before the first token is asked for. `more`: min_p,
    frequency_penalty, presence_penalty, repetition_penalty, logit_bias ({id: bias})."""
    choices = stream_choices(model, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                             seed, eos_id, constraint, **more)
    return (c.token for c in choices)


def stream_choices(model: Any, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None, eos_id: int | None = None,
                   constraint: Any = None, **more: Any) -> Iterator[Choice]:
    """stream(), yielding sllm.sampler.Choice (the token and, with logprobs=k, its
    log-probability and the k likeliest). Ends early when a constraint allows nothing."""
    validate.check_int("max_tokens", max_new_tokens, 0)
    params = sampling_params(temperature, top_k, top_p, seed, vocab_size=model.config.vocab_size,
                             **more)
    ids = [int(t) for t in np.asarray(prompt_ids).reshape(-1)]
    if not ids:
        raise ValueError("the prompt must contain at least one token id")
    sampler = Sampler(params, model.config.vocab_size, ids, constraint, eos_id)
    return _stream(model, ids, max_new_tokens, sampler, eos_id)


def _stream(model: Any, ids: list[int], max_new_tokens: int, sampler: Sampler,
            eos_id: int | None) -> Iterator[Choice]:
    limit = model.config.max_seq_len
    if len(ids) > limit:
        warnings.warn(f"prompt of {len(ids)} tokens truncated to the last {limit} "
                      f"(max_seq_len)", stacklevel=2)
    was_training = model.training
    model.eval()
    cache = model.new_cache(1)
    step = np.zeros((1, 1), np.int64)  # each new token's (B, T) = (1, 1), reused
    try:
        context = ids[-limit:]
        logits = model.decode(np.array([context]), cache)[0]
        for i in range(max_new_tokens):
            choice = sampler.next(logits, max_new_tokens - i)
            if choice is None:
                return
            yield choice
            token = choice.token
            if eos_id is not None and token == eos_id:
                return
            if sampler.constraint is not None and sampler.constraint.finished():
                return
            context.append(token)
            if cache.pos >= limit:
                warnings.warn("context full: dropping the oldest tokens", stacklevel=2)
                context = context[-(limit // 2 + 1):]
                cache.pos = 0
                logits = model.decode(np.array([context]), cache)[0]
            else:
                step[0, 0] = token
                logits = model.decode(step, cache)[0]
    finally:  # also on [EOS] and when the caller stops early: backend memory is not GC'd
        cache.release()
        model.training = was_training


def generate(model: Any, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             eos_id: int | None = None, on_token: Callable[[int], None] | None = None,
             *, json_schema: dict[str, Any] | None = None, regex: str | None = None,
             choices: list[str] | None = None, tokenizer: Any = None, **more: Any
             ) -> list[int]:
    """prompt_ids + up to max_new_tokens sampled ids; on_token is called with each new id.

    json_schema / regex / choices hold the new text to a grammar (sllm.constrain): it
    always parses when generation ends at [EOS] or when the grammar is complete, and the
    budget steers toward completion as max_new_tokens runs out. The text is
    `tokenizer.decode(new ids)` (the model's own tokenizer when none is given). `more`:
    min_p, frequency_penalty, presence_penalty, repetition_penalty, logit_bias."""
    out = [int(t) for t in np.asarray(prompt_ids).reshape(-1)]
    constraint = None
    if json_schema is not None or regex is not None or choices is not None:
        from . import constrain
        tok = tokenizer if tokenizer is not None else _model_tokenizer(model)
        grammar = constrain.compile_for(tok, json_schema=json_schema, regex=regex,
                                        choices=choices)
        if 0 < max_new_tokens < grammar.min_tokens():  # output that cannot complete: refuse now
            raise ValueError(f"max_new_tokens = {max_new_tokens} is too small for the requested "
                             f"format: this vocabulary needs at least {grammar.min_tokens()} tokens")
        constraint = grammar.start()
        eos_id = tok.eos_id if eos_id is None else eos_id
    for choice in stream_choices(model, out, max_new_tokens, temperature, top_k, top_p, seed,
                                 eos_id, constraint, **more):  # (stream's generator, unwrapped)
        token = choice.token
        out.append(token)
        if on_token is not None:
            on_token(token)
    return out


def _model_tokenizer(model: Any) -> Any:
    from .tokenizer import from_dict
    if not model.tokenizer:
        raise ValueError("a constraint needs the tokenizer: pass tokenizer=, the model file "
                         "has none inside")
    return from_dict(model.tokenizer)


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
    incomplete UTF-8 sequence (a byte-level token can split a character): sllm.detok's
    TextStream, which decodes each id once."""
    ids = list(prompt_ids)
    text = TextStream(tok, ids, ())
    for token in stream(model, ids, max_new_tokens, eos_id=tok.eos_id, **sampling):
        if token == tok.eos_id:
            return
        piece, _ = text.push(token)
        if stop_at_newline and "\n" in piece:
            yield piece[:piece.index("\n")]
            return
        if piece:
            yield piece
