"""Weight initialisation schemes: "gpt2" (default), "xavier", "he"."""
from __future__ import annotations

import math

import numpy as np

from .config import ModelConfig

INITS = ("gpt2", "xavier", "he")
# matrices whose output is added to the residual stream: GPT-2 scales their init down
_RESIDUAL_PROJECTIONS = ("c_proj.weight", "o_proj.weight", "down_proj.weight")


def initialize(params: dict[str, np.ndarray], cfg: ModelConfig, scheme: str, seed: int) -> None:
    """Fill `params` in place, deterministically for (scheme, seed).

    gpt2: normal(0, 0.02) for every matrix, with the residual projections (attn.c_proj,
    mlp.c_proj) scaled by 1/sqrt(2 * num_layers) as in GPT-2; xavier: uniform with
    bound sqrt(6 / (fan_in + fan_out)) for the linear layers; he: normal(0, sqrt(2 /
    fan_in)). In every scheme embeddings are normal(0, 0.02), biases zero, LayerNorm
    and RMSNorm weights one. The llama family's residual projections (o_proj, down_proj)
    take the c_proj scaling.
    """
    if scheme not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {scheme!r}")
    rng = np.random.default_rng(seed)
    for name, p in params.items():
        if name.endswith(".bias"):
            p[...] = 0.0
        elif "ln_" in name or name.endswith("norm.weight"):
            p[...] = 1.0
        elif name in ("wte", "wpe", "model.embed_tokens.weight"):
            p[...] = rng.normal(0.0, 0.02, p.shape)
        else:
            p[...] = _linear(rng, p.shape, scheme, name, cfg.num_layers)


def _linear(rng: np.random.Generator, shape: tuple[int, ...], scheme: str, name: str,
            num_layers: int) -> np.ndarray:
    fan_in, fan_out = shape
    if scheme == "xavier":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, shape)
    if scheme == "he":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    std = 0.02 / math.sqrt(2 * num_layers) if name.endswith(_RESIDUAL_PROJECTIONS) else 0.02
    return rng.normal(0.0, std, shape)
