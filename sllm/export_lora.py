"""A LoRA adapter (sllm.lora) for other runtimes: a Hugging Face PEFT directory and llama.cpp's
LoRA GGUF. Plain data in (the adapter's tensors, its LoRA config, its base's ModelConfig),
files out; `sllm export ADAPTER --base BASE` (sllm.export) checks the base first.

sllm keeps A (in, r) and B (r, out) for a weight stored (in, out) and adds
s * (x @ A) @ B, s = alpha / r. Both targets use the same math with the factors transposed:

- PEFT: "base_model.model.<module>.lora_A.weight" = A^T (r, in) and ".lora_B.weight" =
  B^T (out, r), PEFT's nn.Linear layouts, for GPT-2's Conv1D modules (fan_in_fan_out) as
  for llama's nn.Linear; adapter_config.json carries r, lora_alpha and the target modules.
  Trainable token rows go out as PEFT's trainable_token_indices: the full rows under
  "<embedding module>.token_adapter.trainable_tokens_delta" (a tied GPT-2 head follows
  its wte), and llama's untied lm_head's rows under "lm_head.token_adapter...".
- llama.cpp (convert_lora_to_gguf.py's layout): "<GGUF base tensor>.lora_a" = A^T, ggml ne
  [in, r], and ".lora_b" = B^T, ne [r, out]; llama.cpp checks them against its base tensor
  (ne [in, out]) and scales by adapter.lora.alpha / r.

GPT-2's c_attn is fused in transformers and in llama.cpp, so it goes out as it is. sllm's
llama fuses q|k|v into one qkv_proj; both runtimes keep q_proj, k_proj and v_proj apart.
(x @ A) @ B[:, cols] is exactly the fused update's columns, so each becomes an adapter of
its own with the same A and its column slice of B. llama.cpp's llama rotates interleaved
pairs, so its q and k weights have their rows permuted per head (sllm.gguf_llama); the
delta B^T @ A^T of q and k gets the same permutation by permuting the rows of B^T.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ExportError
from .extras import require
from .fileio import atomic_write
from .gguf_file import gguf_name
from .gguf_llama import half_to_interleaved, llama_gguf_name
from .hf import hf_name
from .hf_llama import qkv_split
from .lora_tokens import SUFFIX, row_deltas, row_owners

if TYPE_CHECKING:
    from .lora import Adapter
    from .model import SLLM

ADAPTER_FORMATS = ("peft", "gguf")
DTYPES = {"f32": np.float32, "f16": np.float16}
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def check_adapter_format(to: str) -> None:
    """ExportError unless `to` is a format an adapter exports to (--to hf says what to do)."""
    if to not in ADAPTER_FORMATS:
        raise ExportError(
            f"a LoRA adapter exports --to {' or '.join(ADAPTER_FORMATS)}, not {to!r}"
            + ("; --to hf writes a whole model: export the adapter --to peft, or merge it "
               "first (sllm merge BASE ADAPTER -o MERGED) and export that" if to == "hf" else ""))


def _check_dtype(dtype: str) -> Any:
    if dtype not in DTYPES:
        raise ExportError(f"--dtype for an adapter must be one of {', '.join(DTYPES)}, "
                          f"got {dtype!r}")
    return DTYPES[dtype]


# ---- the adapter per weight, as the other runtimes split the model ------------------------
def adapted_weights(adapter: Adapter) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(weight name, A (in, r), B (r, out)) per weight the adapter changes, under the name
    the weight has in the Hugging Face model: GPT-2's sllm names (sllm.hf adds
    "transformer."), llama's LlamaForCausalLM names, its fused qkv_proj split in three."""
    cfg = adapter.base_config
    for name in adapter.targets:
        a, b = adapter.tensors[name + ".lora_a"], adapter.tensors[name + ".lora_b"]
        if cfg.architecture == "llama" and name.endswith("self_attn.qkv_proj.weight"):
            for part, cols in qkv_split(name, cfg):
                yield part, a, b[:, cols]
        else:
            yield name, a, b


# ---- Hugging Face PEFT -----------------------------------------------------------------------
def _module(name: str, architecture: str) -> str:
    """The transformers module path of a weight ("transformer.h.0.attn.c_attn")."""
    full = hf_name(name) if architecture != "llama" else name
    return full.removesuffix(".weight")


def _target_modules(modules: list[str], num_layers: int) -> list[str]:
    """PEFT's target_modules: the modules' names within a layer ("attn.c_proj", which PEFT
    matches as a suffix, so GPT-2's attn.c_proj is told from mlp.c_proj) when every layer
    has the same ones, else the full module paths."""
    inner = sorted({m.split(".", 3)[3] for m in modules})  # "transformer.h.0.attn.c_attn"
    return inner if len(inner) * num_layers == len(modules) else sorted(modules)


def peft_config(adapter: Adapter, base_name: str = "") -> dict[str, Any]:
    """adapter_config.json of a PEFT LoRA for the base's transformers model."""
    cfg = adapter.base_config
    modules = [_module(n, cfg.architecture) for n, _, _ in adapted_weights(adapter)]
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": adapter.config.rank,
            "lora_alpha": adapter.config.alpha, "lora_dropout": adapter.config.dropout,
            "target_modules": _target_modules(modules, cfg.num_layers),
            "fan_in_fan_out": cfg.architecture != "llama",  # GPT-2's Conv1D keeps (in, out)
            "bias": "none", "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "modules_to_save": None, "inference_mode": True,
            "base_model_name_or_path": base_name,
            **({"trainable_token_indices": _token_indices(adapter)} if adapter.token_ids else {})}


def _token_indices(adapter: Adapter) -> dict[str, list[int]]:
    """PEFT's trainable_token_indices per layer name: the input embedding's (wte or
    embed_tokens; a tied head follows it) and an untied lm_head's. (A bare list would mean
    embed_tokens to PEFT, which GPT-2 lacks.)"""
    cfg, ids = adapter.base_config, list(adapter.token_ids)
    return {_module(o, cfg.architecture).rsplit(".", 1)[-1]: ids for o in row_owners(cfg)}


def peft_tensors(adapter: Adapter, dtype: str = "f32") -> dict[str, np.ndarray]:
    """adapter_model.safetensors' tensors: lora_A.weight = A^T (r, in), lora_B.weight =
    B^T (out, r), under "base_model.model.<module>"."""
    kind = _check_dtype(dtype)
    arch = adapter.base_config.architecture
    out = {}
    for name, a, b in adapted_weights(adapter):
        key = f"base_model.model.{_module(name, arch)}"
        out[f"{key}.lora_A.weight"] = np.ascontiguousarray(a.T, dtype=kind)
        out[f"{key}.lora_B.weight"] = np.ascontiguousarray(b.T, dtype=kind)
    if adapter.token_ids:  # the rows themselves, as PEFT's TrainableTokensLayer holds them
        for owner in row_owners(adapter.base_config):
            key = f"base_model.model.{_module(owner, arch)}.token_adapter.trainable_tokens_delta"
            out[key] = np.ascontiguousarray(adapter.tensors[owner + SUFFIX], dtype=kind)
    return out


def export_peft(adapter: Adapter, directory: str | os.PathLike[str], dtype: str = "f32",
                base_name: str = "") -> list[str]:
    """Write `adapter` as a PEFT directory (adapter_config.json, adapter_model.safetensors)
    loadable by peft.PeftModel.from_pretrained on `sllm export BASE --to hf`; returns the
    files written."""
    save = require("safetensors.numpy").save
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ExportError(f"{d} exists and is not a directory")
    files = {PEFT_WEIGHTS: save(peft_tensors(adapter, dtype), metadata={"format": "pt"}),
             PEFT_CONFIG: (json.dumps(peft_config(adapter, base_name), indent=2) + "\n").encode()}
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with atomic_write(d / name) as f:
            f.write(data)
    return sorted(files)


# ---- llama.cpp's LoRA GGUF ---------------------------------------------------------------
def gguf_lora_tensors(adapter: Adapter, dtype: str = "f32",
                      base: SLLM | None = None) -> dict[str, np.ndarray]:
    """{"<GGUF base tensor>.lora_a": A^T (r, in), ".lora_b": B^T (out, r)}: numpy shapes,
    ggml's ne reversed. Llama's q and k lora_b rows permuted as the base's q and k rows.
    Token rows need the `base` model (their difference from its rows)."""
    if adapter.token_ids and adapter.base_config.tie_embeddings:
        raise ExportError("this adapter has trainable token rows (token_ids) on a tied head, "
                          "which llama.cpp's LoRA cannot encode (its token_embd LoRA layout "
                          "does not fit the output matmul); merge it into its base (sllm "
                          "merge) and export the merged model")
    kind = _check_dtype(dtype)
    cfg = adapter.base_config
    llama = cfg.architecture == "llama"
    out = {}
    for name, a, b in adapted_weights(adapter):
        bt = b.T
        if llama and name.endswith("q_proj.weight"):
            bt = half_to_interleaved(bt, cfg.num_heads)
        elif llama and name.endswith("k_proj.weight"):
            bt = half_to_interleaved(bt, cfg.kv_heads)
        key = llama_gguf_name(name) if llama else gguf_name(name)
        out[key + ".lora_a"] = np.ascontiguousarray(a.T, dtype=kind)
        out[key + ".lora_b"] = np.ascontiguousarray(bt, dtype=kind)
    if adapter.token_ids:
        if base is None:
            raise ExportError("an adapter with token rows exports to GGUF against its base "
                              "model (sllm export ADAPTER --to gguf --base BASE)")
        out.update({k: np.ascontiguousarray(v, dtype=kind)
                    for k, v in _gguf_rows(adapter, base).items()})
    return out


def _gguf_rows(adapter: Adapter, base: SLLM) -> dict[str, np.ndarray]:
    """Untied token rows as exact rank-n LoRAs (n = len(ids)) of token_embd and output:
    one factor selects the ids (one-hot), the other holds the rows' differences from the
    base over llama.cpp's scale alpha / n. llama.cpp adds token_embd's as
    b @ a[token] (a: ne [n, V], b: ne [n, C]: get_rows on a), output's as the usual
    (x @ A) @ B."""
    cfg, ids = adapter.base_config, np.asarray(adapter.token_ids)
    n, (emb, head) = len(ids), row_owners(cfg)
    deltas = row_deltas(base, adapter)
    scale = adapter.config.alpha / n if adapter.config.alpha else 1.0
    name = llama_gguf_name if cfg.architecture == "llama" else gguf_name
    onehot = np.zeros((cfg.vocab_size, n), np.float32)
    onehot[ids, np.arange(n)] = 1.0
    d_emb = deltas[emb + SUFFIX] / scale  # (n, C)
    d_head = deltas[head + SUFFIX] / scale
    return {name(emb) + ".lora_a": onehot, name(emb) + ".lora_b": d_emb.T,
            name(head) + ".lora_a": d_head, name(head) + ".lora_b": onehot}


def export_lora_gguf(adapter: Adapter, path: str | os.PathLike[str], dtype: str = "f32",
                     base_name: str = "", base: SLLM | None = None) -> int:
    """Write `adapter` as llama.cpp's LoRA GGUF (general.type adapter, adapter.type lora,
    adapter.lora.alpha) for the base's GGUF export (architecture gpt2 or llama), atomically;
    returns how many tensors it holds."""
    gguf = require("gguf")
    cfg = adapter.base_config
    arch = "llama" if cfg.architecture == "llama" else "gpt2"
    tensors = gguf_lora_tensors(adapter, dtype, base)
    with atomic_write(path) as f:
        writer = gguf.GGUFWriter(f.name, arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(adapter.config.alpha or 0.0))
        writer.add_name(base_name or "sllm")
        writer.add_file_type(1 if dtype == "f16" else 0)  # gguf.LlamaFileType: F16 / F32
        for name, data in tensors.items():
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()  # its own handle on the temp file; atomic_write fsyncs and renames
    return len(tensors)
