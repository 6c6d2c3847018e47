"""Held-out evaluation: mean cross-entropy and perplexity of a model on a token stream.

`sllm eval` uses it to judge a quantized model against its float32 original: the text is
cut into consecutive windows of the model's context length (the last one shorter), every
token after the first of a window is predicted from the tokens before it in that window,
and the loss is averaged over all predicted tokens.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from .errors import SLLMError
from .finite import NonFiniteError, check_logits


def windows(ids: np.ndarray, seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) pairs over consecutive windows of seq_len predicted tokens."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise SLLMError(f"need at least 2 tokens to evaluate, got {len(ids)}")
    out = []
    for start in range(0, len(ids) - 1, seq_len):
        chunk = ids[start:start + seq_len + 1]
        out.append((chunk[:-1], chunk[1:]))
    return out


def evaluate(model: Any, ids: np.ndarray, batch_size: int = 8,
             max_tokens: int | None = None) -> dict[str, Any]:
    """Mean loss (nats/token) and perplexity of `model` on token ids (eval mode)."""
    if batch_size < 1:
        raise SLLMError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:  # -5 used to drop 5 tokens silently
        raise SLLMError(f"--max-tokens must be >= 1, got {max_tokens}")
    ids = np.asarray(ids)
    if max_tokens is not None:
        ids = ids[:max_tokens + 1]
    model.eval()
    pairs = windows(ids, model.config.max_seq_len)
    total, count, t0 = 0.0, 0, time.perf_counter()
    for i in range(0, len(pairs), batch_size):
        group = pairs[i:i + batch_size]
        width = max(len(x) for x, _ in group)
        x = np.zeros((len(group), width), np.int64)
        y = np.full((len(group), width), -1, np.int64)  # -1: not predicted (padding)
        for row, (xi, yi) in enumerate(group):
            x[row, :len(xi)], y[row, :len(yi)] = xi, yi
        n = int(np.count_nonzero(y >= 0))
        total += _finite_loss(model, x, y, i) * n
        count += n
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": count,
            "seconds": time.perf_counter() - t0, "backend": model.backend.name,
            "dtype": model.qtype or "f32"}


def _finite_loss(model: Any, x: np.ndarray, y: np.ndarray, first: int) -> float:
    """The batch's mean loss; NonFiniteError naming the first non-finite logit when it is
    not finite (a `loss nan` is not a measurement)."""
    loss = model.loss(x, y)
    if not math.isfinite(loss):
        where = f"eval windows {first}..{first + len(x) - 1}"
        check_logits(model.forward(x), where)
        raise NonFiniteError(f"{where}: the loss is {loss} although the logits are finite")
    return loss


def held_out_ids(run_dir: str | os.PathLike[str]) -> np.ndarray:
    """The validation split that `sllm train` held out in a run directory."""
    path = os.path.join(run_dir, "data", "val_ids.npy")
    if not os.path.isfile(path):
        raise SLLMError(f"{run_dir}: no held-out split (data/val_ids.npy); pass --corpus FILE")
    ids = np.load(path, mmap_mode="r", allow_pickle=False)
    if len(ids) < 2:
        raise SLLMError(f"{run_dir}: the held-out split has {len(ids)} tokens; pass --corpus")
    return np.asarray(ids)


def corpus_ids(path: str | os.PathLike[str], tokenizer: Any) -> np.ndarray:
    """A UTF-8 text file encoded with the model's tokenizer."""
    with open(path, encoding="utf-8") as f:
        return np.asarray(tokenizer.encode(f.read()), dtype=np.int64)
