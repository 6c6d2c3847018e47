"""Hugging Face interop: an sllm model as a GPT2LMHeadModel (or, for the llama family,
LlamaForCausalLM: sllm.hf_llama maps its tensors) directory, and back.

sllm's parameters already follow GPT-2: the same names, weights stored (in, out) as
transformers' Conv1D, the tanh GELU ("gelu_new"), LayerNorm eps 1e-5, Q|K|V columns
split by head in order. So the export is a rename: "transformer." before every name,
and for an untied head `lm_head.weight` transposed to nn.Linear's (vocab, embd).
The directory holds model.safetensors, config.json, tokenizer.json and
tokenizer_config.json (see sllm.hf_tokenizer). GGUF lives in sllm.gguf_file; sllm.export
picks between them.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig
from .errors import ConfigError, DataError, ExportError, FormatError
from .extras import require
from .fileio import atomic_write
from .foreign import check_fits, get_bool, get_float, get_int, match_tensors, read_json_object
from .hf_llama import llama_config_from_hf, llama_hf_config, llama_hf_tensors, llama_sllm_tensors
from .layout import Layout

LN_EPS = 1e-5
ACTIVATIONS = {"gelu": "gelu_new", "relu": "relu"}
# transformers' names for the tanh GELU, all the same function as sllm's "gelu".
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
HF_DTYPES = {"f32": np.float32, "f16": np.float16}
SKIPPED = (".attn.bias", ".attn.masked_bias",  # GPT-2's causal-mask buffers, not weights
           ".rotary_emb.inv_freq")  # older llama checkpoints: a buffer, recomputed


# ---- names -------------------------------------------------------------------------------
def hf_name(name: str) -> str:
    """transformers' GPT2LMHeadModel name of an sllm parameter."""
    if name == "lm_head.weight":
        return name
    if name in ("wte", "wpe"):
        return f"transformer.{name}.weight"
    return f"transformer.{name}"


def hf_tensors(model: Any, dtype: str = "f32") -> dict[str, np.ndarray]:
    """The model's parameters under transformers' names and layouts."""
    out = {}
    for name, p in model.parameters().items():
        arr = p.T if name == "lm_head.weight" else p  # nn.Linear keeps (out, in)
        out[hf_name(name)] = np.ascontiguousarray(arr, dtype=HF_DTYPES[dtype])
    return out


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """config.json for GPT2LMHeadModel. sllm's dropout is GPT-2's resid_pdrop (after the
    attention projection and the MLP); sllm has no embedding or attention dropout."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": config.vocab_size, "n_positions": config.max_seq_len,
            "n_ctx": config.max_seq_len, "n_embd": config.embedding_dim,
            "n_layer": config.num_layers, "n_head": config.num_heads,
            "n_inner": config.ffn_hidden_dim,
            "activation_function": ACTIVATIONS[config.activation],
            "resid_pdrop": config.dropout, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "layer_norm_epsilon": LN_EPS, "initializer_range": 0.02,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "use_cache": True,
            "tie_word_embeddings": config.tie_embeddings,
            "bos_token_id": None, "eos_token_id": None, "torch_dtype": "float32"}


# ---- export --------------------------------------------------------------------------------
def export_hf(model: Any, directory: str | os.PathLike[str], dtype: str = "f32") -> list[str]:
    """Write `model` as a Hugging Face GPT-2 directory; returns the files written."""
    save = require("safetensors.numpy").save

    from . import tokenizer as tokenizers
    from .hf_tokenizer import special_tokens, to_tokenizer_json
    if dtype not in HF_DTYPES:
        raise ExportError(f"--dtype for hf must be one of {sorted(HF_DTYPES)}, got {dtype!r}")
    if getattr(model, "qtype", None):
        raise ExportError(f"this model is quantized ({model.qtype}); a GPT2LMHeadModel holds "
                          f"float weights: export the float model (or use --to gguf)")
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ExportError(f"{d} exists and is not a directory")
    tok = tokenizers.from_dict(model.tokenizer) if model.tokenizer else None
    files: dict[str, bytes] = {}
    llama = model.config.architecture == "llama"
    config = llama_hf_config(model.config) if llama else hf_config(model.config)
    if tok is not None:
        config.update(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
        files["tokenizer.json"] = _json(to_tokenizer_json(tok))
        files["tokenizer_config.json"] = _json({
            "tokenizer_class": "PreTrainedTokenizerFast", **special_tokens(tok),
            "split_special_tokens": True,  # as sllm: "[EOS]" typed in text stays text
            "clean_up_tokenization_spaces": False,
            "model_max_length": model.config.max_seq_len})
    if dtype == "f16":
        config["torch_dtype"] = "float16"
    files["config.json"] = _json(config)
    tensors = llama_hf_tensors(model, HF_DTYPES[dtype]) if llama else hf_tensors(model, dtype)
    files["model.safetensors"] = save(tensors, metadata={"format": "pt"})
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with atomic_write(d / name) as f:
            f.write(data)
    return sorted(files)


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# ---- import --------------------------------------------------------------------------------
def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """The sllm config of a GPT-2 (or llama) config.json; ExportError names what option
    sllm cannot run; FormatError names a value of the wrong type."""
    if not isinstance(hf, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    arch = hf.get("model_type")
    if arch == "llama":
        return llama_config_from_hf(hf, where)
    if arch != "gpt2":
        raise ExportError(f"{where}: model_type {arch!r}; sllm imports GPT-2 and llama "
                          f"models (model_type 'gpt2' or 'llama') only")
    act = hf.get("activation_function", "gelu_new")
    if act not in GELU_TANH and act != "relu":
        raise ExportError(f"{where}: activation_function {act!r}; sllm has the tanh GELU "
                          f"({', '.join(GELU_TANH)}) and relu")
    eps = get_float(hf, "layer_norm_epsilon", where, LN_EPS)
    if not math.isclose(eps, LN_EPS, rel_tol=1e-9):
        raise ExportError(f"{where}: layer_norm_epsilon {eps}; sllm's LayerNorm uses {LN_EPS}")
    refused = {"scale_attn_weights": (False, "sllm always scales attention by 1/sqrt(D)"),
               "scale_attn_by_inverse_layer_idx": (True, "sllm does not scale by layer"),
               "add_cross_attention": (True, "sllm has no cross-attention")}
    for key, (bad, why) in refused.items():
        if hf.get(key, not bad) == bad:
            raise ExportError(f"{where}: {key} = {bad}: {why}")
    size: dict[str, Any] = {k: get_int(hf, k, where) for k in (
        "vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions")}
    dropout = get_float(hf, "resid_pdrop", where, 0.0)
    tie = get_bool(hf, "tie_word_embeddings", where, True)
    try:
        return ModelConfig(
            vocab_size=size["vocab_size"], embedding_dim=size["n_embd"],
            num_layers=size["n_layer"], num_heads=size["n_head"],
            ffn_hidden_dim=size["n_inner"] or 4 * int(size["n_embd"] or 0),
            max_seq_len=size["n_positions"],
            dropout=dropout, activation="relu" if act == "relu" else "gelu",
            tie_embeddings=tie)
    except (ConfigError, TypeError, ValueError) as e:
        raise ExportError(f"{where}: {e}") from None


def read_hf_weights(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as float32, named without "transformer."."""
    load_file = require("safetensors.numpy").load_file
    try:
        raw = load_file(os.fspath(path))
    except (require("safetensors").SafetensorError, OSError, ValueError, TypeError) as e:
        raise FormatError(f"{path}: not a readable safetensors file: {e}") from None
    out = {}
    for name, arr in raw.items():
        if arr.dtype.kind != "f":
            raise FormatError(f"{path}: tensor {name!r} has dtype {arr.dtype}; expected floats")
        key = name[len("transformer."):] if name.startswith("transformer.") else name
        if not key.endswith(SKIPPED):
            out[key] = arr.astype(np.float32, copy=False)
    return out


def _sllm_tensors(weights: dict[str, np.ndarray], config: ModelConfig,
                  where: str) -> dict[str, np.ndarray]:
    keys = {name: {"wte": "wte.weight", "wpe": "wpe.weight"}.get(name, name)
            for name in Layout(config).slots}
    needed = {keys[name]: slot.shape[::-1] if name == "lm_head.weight" else slot.shape
              for name, slot in Layout(config).slots.items()}  # nn.Linear: stored (out, in)
    present = {k: v.shape for k, v in weights.items()}
    if config.tie_embeddings:  # transformers may store the tied head anyway: it is wte
        present.pop("lm_head.weight", None)
    match_tensors(present, needed, where)
    return {name: weights[key].T if name == "lm_head.weight" else weights[key]
            for name, key in keys.items()}


def import_hf(directory: str | os.PathLike[str], backend: Any = "numpy") -> Any:
    """An SLLM (eval mode) from a Hugging Face GPT-2 directory holding config.json and
    model.safetensors, with its tokenizer when it has one sllm can represent."""
    from .hf_tokenizer import read_hf_tokenizer
    from .model import SLLM
    d = Path(directory)
    if not (d / "config.json").is_file():
        raise ExportError(f"{d}: no config.json; expected a Hugging Face model directory")
    weights_path = d / "model.safetensors"
    if not weights_path.is_file():
        pickled = [p.name for p in d.glob("*.bin")] + [p.name for p in d.glob("*.pt")]
        raise ExportError(f"{d}: no model.safetensors" + (
            f" ({', '.join(pickled)} is a pickle, which sllm never loads: convert it with "
            f"transformers' save_pretrained(..., safe_serialization=True))" if pickled else ""))
    hf = read_json_object(d / "config.json")
    config = config_from_hf(hf, str(d / "config.json"))
    check_fits(config, weights_path.stat().st_size, weights_path)  # before any layout
    read = llama_sllm_tensors if config.architecture == "llama" else _sllm_tensors
    tensors = read(read_hf_weights(weights_path), config, str(weights_path))
    tok = read_hf_tokenizer(d)
    if tok is not None and tok.vocab_size > config.vocab_size:
        raise DataError(f"{d}: the tokenizer has {tok.vocab_size} ids, the model only "
                        f"{config.vocab_size}")
    model = SLLM(config, backend=backend, init=None)
    for name, param in model.parameters().items():
        param[...] = tensors[name]
    model.tokenizer = tok.to_dict() if tok is not None else None
    model.metadata = {"imported_from": str(d)}
    return model.eval()
