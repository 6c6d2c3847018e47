"""Trainable token rows in a LoRA adapter (PEFT's `trainable_token_indices`).

A LoRA cannot teach the model a token whose embedding row the base never trained (a
byte-fallback piece the pre-training corpus lacked: docs/finetune.md "Quality"). An adapter
may therefore carry, for a few token ids, full replacement rows of the input embedding and
of the output projection: "<embedding>.token_rows" (n, C) and, when the head is not tied
to the embedding (llama's lm_head), "lm_head.weight.token_rows" (n, C), row j holding
column ids[j] of lm_head (C, V). A tied GPT-2 head has one row per id serving both, as full
fine-tuning's tied gradient does. The ids are the metadata list "token_ids".

Attached, the model computes with the base and adds the rows' difference from the base
(rows - base rows) where the ids occur: embedding rows at the positions holding an id,
logit columns ids of the head. Only the rows get gradients and optimizer state; `merge`
writes them into the base.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import ModelConfig
from .errors import ConfigError, LoraError
from .layout import embedding_name
from .quant import QTensor
from .tokenizer import BYTE_TOKENS

if TYPE_CHECKING:
    from .lora_bank import AdapterBank
    from .model import SLLM

__all__ = ["TokenRows", "TokenHead", "row_names", "row_owners", "check_ids", "base_rows", "row_deltas",
           "parse_option", "fallback_ids"]

SUFFIX = ".token_rows"
HEAD = "lm_head.weight"


def row_names(config: ModelConfig) -> list[str]:
    """The adapter tensors that hold token rows for a base of `config`: the embedding's,
    and the head's when it is not tied."""
    names = [embedding_name(config) + SUFFIX]
    return names if config.tie_embeddings else names + [HEAD + SUFFIX]


def check_ids(ids: Iterable[Any], vocab_size: int, what: str = "lora_tokens (--lora-tokens)") -> list[int]:
    """The ids as a list of ints, each in [0, vocab_size) and unique; ConfigError naming
    the first offending one."""
    out: list[int] = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < vocab_size:
            raise ConfigError(f"{what}: token id {i!r} is not an integer in [0, {vocab_size})")
        if int(i) in out:
            raise ConfigError(f"{what}: token id {int(i)} is listed twice")
        out.append(int(i))
    return out


def row_owners(config: ModelConfig) -> list[str]:
    """The base tensors token rows replace rows of: the embedding, and an untied head."""
    return [n.removesuffix(SUFFIX) for n in row_names(config)]


def fallback_ids(tok: Any, ids: Any) -> list[int]:
    """The byte-fallback pieces ("<0x41>") among `ids` (a corpus's encoding), sorted: the
    characters the base's vocabulary lacks, spelled byte by byte, whose rows pre-training
    never trained when its corpus had none. A byte-level BPE has no such pieces."""
    names = getattr(tok, "tokens", None) or getattr(tok, "chars", None) or \
        getattr(tok, "pieces", None)
    if not getattr(tok, "byte_fallback", False) and getattr(tok, "kind", "") != "spm" or not names:
        return []
    byte_names = set(BYTE_TOKENS)
    return [int(i) for i in np.unique(np.asarray(ids)) if names[int(i)] in byte_names]


def parse_option(value: str) -> str | list[int]:
    """--lora-tokens: "auto", "none" or a comma list of token ids (range-checked later,
    against the base's vocabulary)."""
    v = value.strip()
    if v in ("auto", "none"):
        return v
    try:
        return [int(p) for p in v.split(",")]
    except ValueError:
        raise ConfigError(f"--lora-tokens must be auto, none or a comma list of token ids, "
                          f"got {value!r}") from None


def base_rows(model: SLLM, ids: list[int]) -> dict[str, np.ndarray]:
    """The base's own rows for `ids` under the adapter's tensor names (float32 copies): a
    fresh adapter's rows, which leave the model unchanged. A quantized embedding or head is
    refused (its rows are not the float rows a merge would write)."""
    cfg, params = model.config, model.parameters()
    emb = embedding_name(cfg)
    held = model.quantized_weights()
    if emb in held or HEAD in held:
        raise LoraError("trainable token rows need a float32 embedding and head; train or "
                        "attach this adapter on the float32 base")
    rows = {emb + SUFFIX: np.array(params[emb][ids], np.float32)}
    if not cfg.tie_embeddings:
        rows[HEAD + SUFFIX] = np.array(params[HEAD][:, ids].T, np.float32)
    return rows


def row_deltas(model: SLLM, adapter: Any) -> dict[str, np.ndarray]:
    """`adapter`'s token rows minus `model`'s own rows (float32), under row_names: what
    serving adds per row and what a LoRA export must encode."""
    base = base_rows(model, list(adapter.token_ids))
    return {n: np.asarray(adapter.tensors[n], np.float32) - base[n]
            for n in row_names(model.config)}


class TokenRows:
    """An attached adapter's token rows: `embed` (n, C) and `head` (n, C) views of its flat
    buffer (the same view when tied) and their gradient views, against the base's rows."""

    def __init__(self, model: SLLM, ids: list[int], views: dict[str, np.ndarray],
                 grads: dict[str, np.ndarray]):
        cfg = model.config
        names = row_names(cfg)
        self.ids = np.asarray(ids, np.int64)
        base_rows(model, ids)  # refuses a quantized embedding or head
        # the base's rows are read at each use, not copied: a data-parallel rank attaches
        # before its base weights arrive
        self.params, self.tied, self.emb = model.parameters(), cfg.tie_embeddings, embedding_name(cfg)
        self.embed, self.dembed = views[names[0]], grads[names[0]]
        self.head, self.dhead = views[names[-1]], grads[names[-1]]
        self.lookup = np.full(cfg.vocab_size, -1, np.int64)  # token id -> its row, or -1
        self.lookup[self.ids] = np.arange(len(ids))

    def _embed_delta(self, j: np.ndarray) -> np.ndarray:
        """Rows j's difference from the base's embedding rows."""
        return self.embed[j] - self.params[self.emb][self.ids[j]]

    def _head_delta(self) -> np.ndarray:
        """The head rows' difference from the base's (n, C)."""
        base = self.params[self.emb][self.ids] if self.tied else \
            self.params[HEAD][:, self.ids].T
        return self.head - base

    def _where(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions holding one of the ids, their row index)."""
        j = self.lookup[tokens.reshape(-1)]
        at = np.flatnonzero(j >= 0)
        return at, j[at]

    def embed_fwd(self, x0: np.ndarray, tokens: np.ndarray) -> None:
        """x0 rows at the ids' positions += row - base row."""
        at, j = self._where(tokens)
        if len(at):
            x = x0.reshape(-1, x0.shape[-1])
            x[at] += self._embed_delta(j)

    def embed_bwd(self, dx0: np.ndarray, tokens: np.ndarray) -> None:
        """The embedding rows' gradient: dx0 summed over the positions of each id."""
        at, j = self._where(tokens)
        if len(at):
            np.add.at(self.dembed, j, dx0.reshape(-1, dx0.shape[-1])[at])

    def head_fwd(self, logits: np.ndarray, h: np.ndarray) -> None:
        """logits[:, ids] += h @ (head - base head)^T (logits (N, V) rows, h (N, C))."""
        rows = logits.reshape(-1, logits.shape[-1])
        rows[:, self.ids] += h.reshape(len(rows), -1) @ self._head_delta().T

    def head_bwd(self, dh: np.ndarray, dlogits: np.ndarray, h: np.ndarray) -> None:
        """dhead += dlogits[:, ids]^T @ h; dh (the base's part already in it) += the
        rows' difference's part."""
        dy = dlogits.reshape(-1, dlogits.shape[-1])[:, self.ids]
        x = h.reshape(len(dy), -1)
        self.dhead += dy.T @ x
        dh.reshape(len(dy), -1)[...] += dy @ self._head_delta()


class TokenHead:
    """The output head while token rows are attached: the base weight, and the rows that
    SLLM._matmul / _matmul_bwd add after the base matmul (a TokenRows, or a serving
    AdapterBank adding each row's adapter's rows: forward only)."""

    def __init__(self, base: np.ndarray | QTensor, rows: TokenRows | AdapterBank):
        self.base: np.ndarray | QTensor = base
        self.rows: TokenRows | AdapterBank = rows
