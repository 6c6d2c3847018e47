"""The llama family as GGUF architecture "llama": llama.cpp's tensor names, orientations,
q/k permutation and metadata, as its convert_hf_to_gguf.py writes a LlamaForCausalLM.

Names: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
ffn_gate, ffn_up, ffn_down}, output_norm, output (absent when tied: llama.cpp then reads
token_embd). Matrices (out, in), as sllm.hf_llama's LlamaForCausalLM tensors.

RoPE: llama.cpp's llama architecture rotates interleaved pairs (x[2i], x[2i+1]), sllm
rotates halves (x[i], x[i+D/2]); convert_hf_to_gguf.py's LlamaModel.permute reorders each
head's q and k output rows: new row 2i <- old row i, new row 2i+1 <- old row i+D/2
(reshape (heads, 2, D/2, C), swap axes 1 and 2). sllm.llama2c.interleaved_to_half is its
inverse. The q.k scores, hence the logits, are unchanged (docs/interop.md).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .hf_llama import llama_hf_tensors

_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}


def half_to_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's permute: each head's rows (heads*D, C) from rotate-half to
    interleaved pairs (new row 2i <- old i, new row 2i+1 <- old i + D/2)."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def llama_gguf_name(hf_name: str) -> str:
    """llama.cpp's llama tensor name for a LlamaForCausalLM tensor name."""
    if hf_name in _TOP:
        return _TOP[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)  # "model.layers.3.self_attn.q_proj.weight"
    return f"blk.{layer}.{_LAYER[rest.removesuffix('.weight')]}.weight"


def llama_gguf_arrays(model: Any) -> dict[str, np.ndarray]:
    """{llama.cpp name: float32 (out, in) array}, q and k rows permuted to interleaved."""
    cfg = model.config
    out = {}
    for name, arr in llama_hf_tensors(model, np.float32).items():
        if name.endswith("q_proj.weight"):
            arr = half_to_interleaved(arr, cfg.num_heads)
        elif name.endswith("k_proj.weight"):
            arr = half_to_interleaved(arr, cfg.kv_heads)
        out[llama_gguf_name(name)] = arr
    return out


def add_llama_metadata(writer: Any, cfg: Any) -> None:
    """The llama.* keys llama.cpp's llama loader reads (the writer prefixes the arch)."""
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.embedding_dim)
    writer.add_feed_forward_length(cfg.ffn_hidden_dim)
    writer.add_block_count(cfg.num_layers)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
