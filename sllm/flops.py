"""FLOP counts of the model, for GFLOP/s and MFU (model FLOPs utilisation) figures."""
from __future__ import annotations

from .config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in a matrix multiply per token (embedding lookups excluded).

    GPT-2: qkv (C x 3C), proj, fc, fc_proj. Llama: the fused q|k|v (C x (H + 2*Hkv)*D, so
    grouped-query attention projects fewer keys and values), o_proj, and three SwiGLU
    matrices (gate, up, down). Norms, rotary embeddings and activations are elementwise and
    not counted (as nanoGPT and PaLM's MFU count neither)."""
    C, F = cfg.embedding_dim, cfg.ffn_hidden_dim
    if cfg.architecture == "llama":
        per_layer = C * cfg.qkv_width + C * C + 3 * C * F
    else:
        per_layer = C * 3 * C + C * C + C * F + F * C
    return cfg.num_layers * per_layer + C * cfg.vocab_size


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """FLOPs of one forward pass per token, at sequence length T.

    Each matmul weight costs 2 FLOPs per token. Causal attention computes, per layer and
    sequence, T(T+1)/2 query-key dot products and as many weighted sums of values, each of
    width C across the heads: 2 * 2 * C * T(T+1)/2 FLOPs, i.e. 2 * C * (T+1) per token.
    (Grouped-query attention shares keys and values among query heads but computes as many
    scores: the count is the same.)
    """
    attention = 2 * cfg.embedding_dim * (seq_len + 1) * cfg.num_layers
    return 2.0 * matmul_params(cfg) + attention


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """FLOPs of forward + backward per token: backward costs twice the forward."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)


def decode_flops_per_token(cfg: ModelConfig, context: int) -> float:
    """FLOPs to generate one token with a KV cache holding `context` positions."""
    return 2.0 * matmul_params(cfg) + 4 * cfg.embedding_dim * (context + 1) * cfg.num_layers
