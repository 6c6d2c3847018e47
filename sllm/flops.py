"""FLOP counts of the model, for GFLOP/s and MFU (model FLOPs utilisation) figures."""
from __future__ import annotations

from .config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in a matrix multiply per token (embedding lookups excluded)."""
    C, F = cfg.embedding_dim, cfg.ffn_hidden_dim
    per_layer = C * 3 * C + C * C + C * F + F * C
    return cfg.num_layers * per_layer + C * cfg.vocab_size


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """FLOPs of one forward pass per token, at sequence length T.

    Each matmul weight costs 2 FLOPs per token. Causal attention computes, per layer and
    sequence, T(T+1)/2 query-key dot products and as many weighted sums of values, each of
    width C across the heads: 2 * 2 * C * T(T+1)/2 FLOPs, i.e. 2 * C * (T+1) per token.
    """
    attention = 2 * cfg.embedding_dim * (seq_len + 1) * cfg.num_layers
    return 2.0 * matmul_params(cfg) + attention


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """FLOPs of forward + backward per token: backward costs twice the forward."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)


def decode_flops_per_token(cfg: ModelConfig, context: int) -> float:
    """FLOPs to generate one token with a KV cache holding `context` positions."""
    return 2.0 * matmul_params(cfg) + 4 * cfg.embedding_dim * (context + 1) * cfg.num_layers
