"""Hugging Face interop for the llama family: an sllm llama model as a LlamaForCausalLM
directory's config and tensors, and back (sllm.hf writes and reads the directory).

The mapping is one to one (docs/llama.md): torch keeps nn.Linear weights (out, in), sllm
(in, out), so every matrix but the embedding is transposed; sllm's fused
self_attn.qkv_proj (C, (H + 2*Hkv)*D) is q_proj | k_proj | v_proj side by side. Both use
the rotate-half rotary convention, so q and k need no permutation.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .config import ModelConfig
from .errors import ConfigError, ExportError, FormatError
from .foreign import get_bool, get_float, get_int, match_names
from .layout import Layout

_LINEARS = ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def qkv_split(name: str, config: ModelConfig) -> list[tuple[str, slice]]:
    """The q_proj, k_proj and v_proj weight names of sllm's fused `name` (a
    "...self_attn.qkv_proj.weight") with the column slice of it each one is."""
    HD, KD = config.num_heads * config.head_dim, config.kv_heads * config.head_dim
    base = name[:-len("qkv_proj.weight")]
    return [(f"{base}q_proj.weight", slice(0, HD)), (f"{base}k_proj.weight", slice(HD, HD + KD)),
            (f"{base}v_proj.weight", slice(HD + KD, HD + 2 * KD))]


def llama_hf_tensors(model: Any, dtype: Any) -> dict[str, np.ndarray]:
    """The model's parameters under LlamaForCausalLM's names and (out, in) layouts."""
    out: dict[str, np.ndarray] = {}
    for name, p in model.parameters().items():
        if name.endswith("self_attn.qkv_proj.weight"):
            for part, cols in qkv_split(name, model.config):
                out[part] = p[:, cols].T
        elif p.ndim == 2 and name != "model.embed_tokens.weight":
            out[name] = p.T
        else:
            out[name] = p
    return {n: np.ascontiguousarray(a, dtype=dtype) for n, a in out.items()}


def llama_hf_config(config: ModelConfig) -> dict[str, Any]:
    """config.json for LlamaForCausalLM (no biases, SiLU gate, no rope scaling)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": config.vocab_size, "hidden_size": config.embedding_dim,
            "intermediate_size": config.ffn_hidden_dim,
            "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
            "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim,
            "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
            "rope_theta": config.rope_theta, "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
            "tie_word_embeddings": config.tie_embeddings, "use_cache": True,
            "bos_token_id": None, "eos_token_id": None, "torch_dtype": "float32"}


def llama_config_from_hf(hf: dict[str, Any], where: str) -> ModelConfig:
    """The sllm config of a LlamaForCausalLM config.json; ExportError names what sllm
    cannot run (biases, another activation, rope scaling, a head dim of its own)."""
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ExportError(f"{where}: hidden_act {act!r}; sllm's llama MLP is SwiGLU (silu)")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ExportError(f"{where}: {key} = true; sllm's llama family has no biases")
    if hf.get("rope_scaling"):
        raise ExportError(f"{where}: rope_scaling {hf['rope_scaling']!r}; sllm implements "
                          f"plain rotary embeddings")
    size: dict[str, Any] = {k: get_int(hf, k, where) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "max_position_embeddings", "num_key_value_heads")}
    theta = get_float(hf, "rope_theta", where, 10000.0)
    eps = get_float(hf, "rms_norm_eps", where, 1e-6)
    tie = get_bool(hf, "tie_word_embeddings", where, False)
    C, H = size["hidden_size"], size["num_attention_heads"]
    if hf.get("head_dim") not in (None, (C or 0) // (H or 1)):
        raise ExportError(f"{where}: head_dim {hf['head_dim']} is not hidden_size / "
                          f"num_attention_heads; sllm needs H * D = C")
    try:
        return ModelConfig(
            architecture="llama", vocab_size=size["vocab_size"], embedding_dim=C,
            num_layers=size["num_hidden_layers"], num_heads=H,
            num_kv_heads=size["num_key_value_heads"] or H,
            ffn_hidden_dim=size["intermediate_size"],
            max_seq_len=size["max_position_embeddings"], dropout=0.0,
            rope_theta=theta, norm_eps=eps, tie_embeddings=tie)
    except (ConfigError, TypeError, ValueError) as e:
        raise ExportError(f"{where}: {e}") from None


def llama_sllm_tensors(weights: dict[str, np.ndarray], config: ModelConfig,
                       where: str) -> dict[str, np.ndarray]:
    """LlamaForCausalLM tensors as sllm's parameters (shapes checked, names given)."""
    used: dict[str, None] = {}

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        used[key] = None
        if key not in weights:
            raise FormatError(f"{where}: tensor {key!r} is missing")
        if weights[key].shape != shape:
            raise FormatError(f"{where}: tensor {key!r} has shape {weights[key].shape}; "
                              f"the config needs {shape}")
        return weights[key]

    C, D = config.embedding_dim, config.head_dim
    out = {}
    for name, slot in Layout(config).slots.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            base = name[:-len("qkv_proj.weight")]
            heads = (("q", config.num_heads), ("k", config.kv_heads), ("v", config.kv_heads))
            out[name] = np.concatenate([get(f"{base}{p}_proj.weight", (h * D, C)).T
                                        for p, h in heads], axis=1)
        elif len(slot.shape) == 2 and name != "model.embed_tokens.weight":
            out[name] = get(name, slot.shape[::-1]).T
        else:
            out[name] = get(name, slot.shape)
    present = {k: None for k in weights if not (config.tie_embeddings and k == "lm_head.weight")}
    match_names(present, used, where)  # no extra tensor (a layer the config drops)
    return out
