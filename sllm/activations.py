"""Preallocated activation and activation-gradient buffers for one (B, T) shape.

Fresh memory is slow to touch, so the model allocates these once per batch shape and
reuses them every step. Each buffer is an array owned by the backend.
"""
from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from .backends.base import Backend, decode_block_workspace, llama_decode_block_workspace
from .budget import HEAD_ROWS
from .config import ModelConfig


class Activations:
    """Forward activations per layer (kept for backward) plus shared gradient scratch.

    Without gradients (evaluation, generation) the layers share one set of buffers but
    for each layer's output, as under recompute.

    recompute (training only, activation checkpointing): every layer shares one set of
    buffers except its output res3 (the next layer's input), and backward recomputes each
    layer's forward from its input before going back through it: about one more forward of
    the blocks per step for 1/num_layers of the per-layer memory. The logits are then made
    HEAD_ROWS rows at a time by the loss (SLLM._head_loss), never all N x V.
    """

    def __init__(self, backend: Backend, cfg: ModelConfig, B: int, T: int, train: bool,
                 recompute: bool = False, frozen: bool = False):
        self.backend = backend
        self.recompute = recompute and train
        self.has_grads = train
        self.shape = (B, T)
        C, F, V = cfg.embedding_dim, cfg.ffn_hidden_dim, cfg.vocab_size
        self._owned: list[np.ndarray] = []
        self._dims = (C, F)
        self._decode_work: np.ndarray | None = None
        self._last_rows: tuple[np.ndarray, np.ndarray] | None = None
        new = self._new
        self.tokens = new((B, T), np.int32)
        self.targets = new((B, T), np.int32)
        self.x0 = new((B, T, C))
        if train:  # gradient scratch, shared by all layers
            self.dres, self.dbranch, self.dln = new((B, T, C)), new((B, T, C)), new((B, T, C))
            # never live at once in a layer's backward (SLLM._backward): datty is written
            # after dln's last read, dqkv after dfch's; so they share memory
            self.datty = self.dln
            wide = new((B * T * max(3 * C, F),))
            self.dqkv = wide[:B * T * 3 * C].reshape(B, T, 3 * C)
            self.dfch = wide[:B * T * F].reshape(B, T, F)
        self.layers = self._per_layer(lambda: self._layer(cfg, frozen), cfg.num_layers)
        # lnf is read only by the head (forward, loss): under recompute it is dres, whose
        # first write is the final norm's backward after the head's
        self.lnf = self.dres if self.recompute else new((B, T, C))
        self.lnf_mean, self.lnf_rstd = new((B, T)), new((B, T))
        self.logits = self._logits(B, T, V)
        self.losses = new((B, T))
        self.dropout = 0.0  # the rate the last forward used; backward replays its masks

    def _layer(self, cfg: ModelConfig, frozen: bool) -> SimpleNamespace:
        """One GPT-2 layer's buffers. Under recompute (one set for every layer) some are the
        gradient scratch, dead whenever a forward runs (the step's first, or backward's
        recomputing one): the branch outputs attproj and fcproj (read only by the residual
        add after each) are dbranch, and with a frozen base (an adapter attached) fch_act is
        dfch: SLLM._matmul_bwd reads each block of rows of a frozen weight's input before it
        writes the input gradient there."""
        (B, T), C, F, new = self.shape, cfg.embedding_dim, cfg.ffn_hidden_dim, self._new
        H, shared = cfg.num_heads, self.recompute
        return SimpleNamespace(
            ln1=new((B, T, C)), ln1_mean=new((B, T)), ln1_rstd=new((B, T)),
            qkv=new((B, T, 3 * C)), att=new(self.backend.attention_saved_shape(B, T, H)),
            atty=new((B, T, C)), attproj=self.dbranch if shared else new((B, T, C)),
            res2=new((B, T, C)), ln2=new((B, T, C)), ln2_mean=new((B, T)),
            ln2_rstd=new((B, T)), fch=new((B, T, F)),
            fch_act=self.dfch if shared and frozen else new((B, T, F)),
            fcproj=self.dbranch if shared else new((B, T, C)), res3=new((B, T, C)))

    def decode_work(self) -> np.ndarray:
        """The scratch of the fused decode_block kernel for this shape, allocated on first
        use (decode steps only: training shapes never pay for it)."""
        if self._decode_work is None:
            B, T = self.shape
            self._decode_work = self._new(
                (decode_block_workspace(B, T, self._dims[0], self._dims[1]),))
        return self._decode_work

    def last_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(B, 1, C) and (B, 1, V) buffers for the head of the last position alone (a
        prefill: SLLM.decode returns only that row), allocated on first use."""
        if self._last_rows is None:
            B, C, V = self.shape[0], self.lnf.shape[-1], self.logits.shape[-1]
            self._last_rows = (self._new((B, 1, C)), self._new((B, 1, V)))
        return self._last_rows

    def _logits(self, B: int, T: int, V: int) -> np.ndarray:
        """(B, T, V) logits, overwritten in place by their gradient; with recompute a slice
        of HEAD_ROWS rows (HEAD_ROWS, V), which the loss fills a slice at a time."""
        return self._new((min(B * T, HEAD_ROWS), V) if self.recompute else (B, T, V))

    def _per_layer(self, make: Callable[[], SimpleNamespace], n: int) -> list[SimpleNamespace]:
        """n layers' buffers, each from make(); with recompute, or without a backward (no
        layer's buffers are read after the next layer ran), the first layer's shared by
        all, each of the others with only its own res3."""
        if self.has_grads and not self.recompute:
            return [make() for _ in range(n)]
        shared = make()
        return [shared] + [SimpleNamespace(**{**vars(shared), "res3": self._new(shared.res3.shape)})
                           for _ in range(n - 1)]

    def _new(self, shape: tuple[int, ...], dtype: type[np.generic] | None = None) -> np.ndarray:
        arr = self.backend.empty(shape, dtype)
        self._owned.append(arr)
        return arr

    def release(self) -> None:
        """Give every buffer back to the backend."""
        for arr in self._owned:
            self.backend.free(arr)
        self._owned.clear()
        self._decode_work = None
        self._last_rows = None


class LlamaActivations(Activations):
    """The llama block's buffers (sllm/llama.py): RMSNorm saves only 1/rms, the MLP keeps
    gate, up and their SwiGLU product; positions (N,) feed the rotary kernels."""

    def __init__(self, backend: Backend, cfg: ModelConfig, B: int, T: int, train: bool,
                 recompute: bool = False, frozen: bool = False):
        self.backend = backend
        self.recompute = recompute and train
        self.has_grads = train
        self.shape = (B, T)
        C, F, V, H, W = (cfg.embedding_dim, cfg.ffn_hidden_dim, cfg.vocab_size, cfg.num_heads,
                         cfg.qkv_width)
        self._owned, self._dims, self._decode_work = [], (C, F), None
        self._last_rows = None
        new, N = self._new, B * T
        self.tokens, self.targets = new((B, T), np.int32), new((B, T), np.int32)
        self.positions = new((N,), np.int32)
        self.x0 = new((B, T, C))

        def make() -> SimpleNamespace:
            qkv = new((B, T, W))
            return SimpleNamespace(
                ln1=new((B, T, C)), ln1_rstd=new((B, T)), qkv=qkv, qkv_rows=qkv.reshape(N, W),
                att=new(backend.attention_saved_shape(B, T, H)), atty=new((B, T, C)),
                attproj=new((B, T, C)), res2=new((B, T, C)), ln2=new((B, T, C)),
                ln2_rstd=new((B, T)), gate=new((B, T, F)), up=new((B, T, F)),
                hact=new((B, T, F)), down=new((B, T, C)), res3=new((B, T, C)))

        self.layers = self._per_layer(make, cfg.num_layers)
        self.lnf, self.lnf_rstd = new((B, T, C)), new((B, T))
        self.logits, self.losses = self._logits(B, T, V), new((B, T))
        if train:  # gradient scratch, shared by all layers
            self.dres, self.dbranch, self.dln, self.dln2 = (new((B, T, C)) for _ in range(4))
            self.datty, self.dqkv = new((B, T, C)), new((B, T, W))
            self.dqkv_rows = self.dqkv.reshape(N, W)
            self.dgate, self.dup, self.dh = new((B, T, F)), new((B, T, F)), new((B, T, F))
        self.dropout = 0.0

    def decode_work(self) -> np.ndarray:
        """The scratch of the fused llama_decode_block kernel for this shape, allocated on
        first use (decode steps only)."""
        if self._decode_work is None:
            B, T = self.shape
            self._decode_work = self._new(
                (llama_decode_block_workspace(B, T, self._dims[0], self._dims[1]),))
        return self._decode_work


class KVCache:
    """Keys and values of past positions, per layer: (B, Hkv, max_seq_len, D) each (Hkv =
    cfg.kv_heads: num_heads for GPT-2, fewer under grouped-query attention)."""

    def __init__(self, backend: Backend, cfg: ModelConfig, B: int):
        shape = (B, cfg.kv_heads, cfg.max_seq_len, cfg.head_dim)
        self.backend = backend
        self.k = [backend.zeros(shape) for _ in range(cfg.num_layers)]
        self.v = [backend.zeros(shape) for _ in range(cfg.num_layers)]
        self.pos = 0  # number of positions stored

    def release(self) -> None:
        """Give the cache's memory back to the backend."""
        for arr in self.k + self.v:
            self.backend.free(arr)
        self.k, self.v = [], []

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot src into slot dst (the n choices of
        one prompt share its prefill)."""
        for arr in self.k + self.v:
            arr[dst, :, :length] = arr[src, :, :length]

    def slot(self, s: int) -> KVCacheSlot:
        """Sequence s of this cache alone (a view sharing its memory), empty (pos 0): the
        continuous-batching server prefills a new request's prompt into it with decode()."""
        return KVCacheSlot(self, s)


class Prompts:
    """A batched prefill (SLLM.prefill_batch): row b of a (B, T) KV-cache forward is a
    prompt of lengths[b] tokens (the rest of the row padding), whose keys and values go to
    positions 0.. of cache slot slots[b]."""

    def __init__(self, slots: list[int], lengths: list[int]):
        self.slots, self.lengths = slots, lengths

    def attend(self, k: Backend, la: SimpleNamespace, cache: KVCache, i: int,
               *heads: int) -> None:
        """Layer i's attention, la.qkv into la.atty: each prompt's rows attend over its own
        slot alone, by the attention_decode call decode() makes for that prompt (so a row
        is what a prefill of its prompt alone gives); padding rows get zeros."""
        T = la.qkv.shape[1]
        for b, (s, n) in enumerate(zip(self.slots, self.lengths, strict=True)):
            k.attention_decode(la.atty[b:b + 1, :n], la.qkv[b:b + 1, :n], cache.k[i][s:s + 1],
                               cache.v[i][s:s + 1], 0, *heads)
            if n < T:
                la.atty[b, n:] = 0


class KVCacheSlot(KVCache):
    """A one-sequence view of a KVCache slot; releasing it frees nothing (the owner does)."""

    def __init__(self, owner: KVCache, s: int):  # shares the owner's arrays, allocates none
        self.backend = owner.backend
        self.k = [k[s:s + 1] for k in owner.k]
        self.v = [v[s:s + 1] for v in owner.v]
        self.pos = 0

    def release(self) -> None:
        """Forget the views; the memory belongs to the owning cache."""
        self.k, self.v = [], []
