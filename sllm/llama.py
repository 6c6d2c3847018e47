"""The llama family's forward and backward: a straight line of kernel calls per layer.

Per layer, in llama2.c's run.c order: RMSNorm, the fused q|k|v projection, rotary embedding
of q and k, grouped-query attention, o_proj, residual; RMSNorm, gate and up projections,
SwiGLU, down projection, residual. Then the final RMSNorm and the output head (tied to
the embedding or not). No biases, no learned positions. Dropout (when the config asks for
it) sits where GPT-2 has it: after o_proj and after down_proj.

The backward pass is the same line reversed, by hand, as SLLM's GPT-2 line in model.py.
Rotary convention: Hugging Face LlamaForCausalLM's rotate-half (pairs i, i + D/2), so its
q_proj and k_proj weights map onto qkv_proj without a permutation (docs/llama.md).

JavaScript twin: sllm/web/llama.js (the browser's forward; tests/test_node_parity.py checks
its logits and greedy tokens equal Python's on the same WebAssembly module).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from .activations import KVCache, LlamaActivations, Prompts

if TYPE_CHECKING:
    from .model import SLLM

EMBED, NORM = "model.embed_tokens.weight", "model.norm.weight"


def layer(views: Mapping[str, Any], i: int) -> SimpleNamespace:
    """Short names for the tensors of llama block i (parameters or gradients)."""
    p = f"model.layers.{i}."
    return SimpleNamespace(
        ln1_w=views[p + "input_layernorm.weight"], qkv_w=views[p + "self_attn.qkv_proj.weight"],
        o_w=views[p + "self_attn.o_proj.weight"],
        ln2_w=views[p + "post_attention_layernorm.weight"],
        gate_w=views[p + "mlp.gate_proj.weight"], up_w=views[p + "mlp.up_proj.weight"],
        down_w=views[p + "mlp.down_proj.weight"])


def _embed(m: SLLM, a: LlamaActivations) -> None:
    """x0 = embed_tokens[tokens]: a numpy gather, or the backend's embed_q_fwd of the rows
    when the embedding is quantized."""
    q = m._qweights.get(EMBED)
    if q is not None:
        m.backend.embed_q_fwd(a.x0, a.tokens, q.kernel_rows, q.qtype)
    else:
        a.x0[...] = m._params[EMBED][a.tokens]
    m._token_rows_fwd(a)


def _positions(a: LlamaActivations, pos: int, rows: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Each row's position for the rotary kernels: pos.. per sequence, or a continuous-
    batching step's own positions."""
    B, T = a.shape
    if rows is not None:
        a.positions[...] = rows[1]
    elif T == 1:  # a decode step: no arange to make
        a.positions[...] = pos
    else:
        a.positions.reshape(B, T)[...] = np.arange(pos, pos + T, dtype=np.int32)


def forward(m: SLLM, a: LlamaActivations, dropout: float, cache: KVCache | None,
            rows: tuple[np.ndarray, np.ndarray] | None = None,
            prompts: Prompts | None = None) -> None:
    """The llama forward over a.tokens into a.logits (see SLLM._forward for the arguments)."""
    k, cfg, P = m.backend, m.config, m._params
    _embed(m, a)
    _positions(a, cache.pos if cache else 0, rows)
    x = a.x0
    # a KV-cache step (prefill, decode) reads the weights as the backend packs them
    batch = m._decode_weights() if cache is not None else None
    blocks = batch.blocks if batch else m._blocks
    for i, (L, la) in enumerate(zip(batch.layers if batch else m._p_layers, a.layers,
                                    strict=True)):
        if cache is not None and prompts is None and (block := blocks[i]) is not None and \
                (rows is None or m._fused_batch):
            # a decode step: the whole block in one call (_block's lines, fused)
            params, qtype = block
            dims = (cfg.num_heads, cfg.kv_heads, cfg.ffn_hidden_dim, cfg.rope_theta,
                     cfg.norm_eps, qtype)
            if rows is None:
                k.llama_decode_block(la.res3, x, cache.k[i], cache.v[i], a.decode_work(),
                                     params, cache.pos, *dims)
            else:
                slots, positions = rows
                k.llama_decode_block_batch(la.res3, x, cache.k[i], cache.v[i], a.decode_work(),
                                           params, slots, positions, *dims)
            x = la.res3
            continue
        x = _block(m, a, i, L, la, x, dropout, cache, rows, prompts)
    k.rmsnorm_fwd(a.lnf, a.lnf_rstd, x, P[NORM], cfg.norm_eps)
    m._head_fwd(a, cache, batch.head if batch else None, prompts)
    a.dropout = dropout


def _block(m: SLLM, a: LlamaActivations, i: int, L: SimpleNamespace, la: SimpleNamespace,
           x: np.ndarray, dropout: float, cache: KVCache | None,
           rows: tuple[np.ndarray, np.ndarray] | None, prompts: Prompts | None = None
           ) -> np.ndarray:
    """Block i from its input x into la's buffers; returns its output la.res3. Backward
    calls it again to recompute a layer (Activations.recompute)."""
    k, cfg, mm = m.backend, m.config, m._matmul
    H, Hkv, theta, eps = cfg.num_heads, cfg.kv_heads, cfg.rope_theta, cfg.norm_eps
    pos = cache.pos if cache else 0
    k.rmsnorm_fwd(la.ln1, la.ln1_rstd, x, L.ln1_w, eps)
    mm(la.qkv, la.ln1, L.qkv_w, None)
    k.rope_fwd(la.qkv_rows, a.positions, H, Hkv, theta)
    if cache is None:
        k.attention_fwd(la.atty, la.att, la.qkv, H, Hkv)
    elif prompts is not None:
        prompts.attend(k, la, cache, i, H, Hkv)
    elif rows is not None:
        k.attention_decode_batch(la.atty, la.qkv, cache.k[i], cache.v[i], *rows, H, Hkv)
    else:
        k.attention_decode(la.atty, la.qkv, cache.k[i], cache.v[i], pos, H, Hkv)
    mm(la.attproj, la.atty, L.o_w, None)
    if dropout:
        k.dropout_fwd(la.attproj, la.attproj, dropout, m._dropout_seed(i, 0))
    k.residual_fwd(la.res2, x, la.attproj)
    k.rmsnorm_fwd(la.ln2, la.ln2_rstd, la.res2, L.ln2_w, eps)
    mm(la.gate, la.ln2, L.gate_w, None)
    mm(la.up, la.ln2, L.up_w, None)
    k.swiglu_fwd(la.hact, la.gate, la.up)
    mm(la.down, la.hact, L.down_w, None)
    if dropout:
        k.dropout_fwd(la.down, la.down, dropout, m._dropout_seed(i, 1))
    k.residual_fwd(la.res3, la.res2, la.down)
    return la.res3


def backward(m: SLLM, a: LlamaActivations) -> None:
    """The forward line reversed, from the head's input gradient in a.dln (SLLM._head_loss
    went back through the head): fills m's gradients."""
    k, cfg, P, G = m.backend, m.config, m._params, m._grads
    H, Hkv, theta, p, mmb = cfg.num_heads, cfg.kv_heads, cfg.rope_theta, a.dropout, m._matmul_bwd
    a.dres.fill(0)
    k.rmsnorm_bwd(a.dres, G[NORM], a.dln, a.layers[-1].res3, P[NORM], a.lnf_rstd)
    for i in reversed(range(cfg.num_layers)):
        L, D, la = m._p_layers[i], m._g_layers[i], a.layers[i]
        x_in = a.layers[i - 1].res3 if i > 0 else a.x0
        if a.recompute and i < cfg.num_layers - 1:  # the shared buffers hold layer i + 1
            _block(m, a, i, L, la, x_in, p, None, None)
        dbranch = a.dres
        if p:
            k.dropout_bwd(a.dbranch, a.dres, p, m._dropout_seed(i, 1))
            dbranch = a.dbranch
        mmb(a.dh, D.down_w, None, dbranch, la.hact, L.down_w)
        k.swiglu_bwd(a.dgate, a.dup, a.dh, la.gate, la.up)
        mmb(a.dln, D.gate_w, None, a.dgate, la.ln2, L.gate_w)
        mmb(a.dln2, D.up_w, None, a.dup, la.ln2, L.up_w)
        k.residual_fwd(a.dln, a.dln, a.dln2)  # ln2 feeds both gate and up
        k.rmsnorm_bwd(a.dres, D.ln2_w, a.dln, la.res2, L.ln2_w, la.ln2_rstd)
        dbranch = a.dres
        if p:
            k.dropout_bwd(a.dbranch, a.dres, p, m._dropout_seed(i, 0))
            dbranch = a.dbranch
        mmb(a.datty, D.o_w, None, dbranch, la.atty, L.o_w)
        k.attention_bwd(a.dqkv, a.datty, la.qkv, la.atty, la.att, H, Hkv)
        k.rope_bwd(a.dqkv_rows, a.positions, H, Hkv, theta)
        mmb(a.dln, D.qkv_w, None, a.dqkv, la.ln1, L.qkv_w)
        k.rmsnorm_bwd(a.dres, D.ln1_w, a.dln, x_in, L.ln1_w, la.ln1_rstd)
    # the embedding's gradient: dres summed per token id (a tied head already added its own);
    # none for a frozen base (an adapter attached)
    if m.adapter is None:
        np.add.at(G[EMBED], a.tokens.reshape(-1), a.dres.reshape(-1, cfg.embedding_dim))
    elif m.adapter.tokens is not None:  # an adapter's token rows do
        m.adapter.tokens.embed_bwd(a.dres, a.tokens)

