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

Import (`llama_from_gguf`) reads the same names back from any GGUF `llama` file: the
config from the llama.* keys (architecture variants sllm cannot run -- rope scaling,
experts, a head size of their own -- refused by name), every tensor's shape matched to the
config exactly before anything is allocated beyond the memory-mapped file, q and k rows
turned back to rotate-half. f32 and f16 tensors load exactly. Quantized blocks: when every
matmul weight (and the output head) is of one type q8_0 / q4_0 / q4_1 -- what
`sllm export --dtype` and llama.cpp's quantize of a pure type write -- they become an sllm
quantized model of that type block for block (ggml's rows are sllm's rows along the
reduction axis; q, k and v rows stacked into qkv_proj; token_embd too when it has that
type); in any other mix (sllm's quantized model has one type) they are dequantized to a
float32 model. A quantized llama model exports the same way back.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .config import ModelConfig
from .errors import ConfigError, ExportError, FormatError
from .foreign import decode_tensor, get_float, get_int, match_tensors
from .hf_llama import llama_hf_tensors, llama_sllm_tensors
from .llama2c import interleaved_to_half

_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
_HF_LAYER = {v: k for k, v in _LAYER.items()}
_HF_TOP = {v: k for k, v in _TOP.items()}
# llama.* keys of llama.cpp variants that sllm's llama cannot run, refused by name.
_UNSUPPORTED = ("rope.scaling.type", "rope.scaling.factor", "expert_count",
                "attention.sliding_window", "attention.clamp_kqv", "rope.scaling.finetuned")


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


def hf_name_of(gguf_name: str) -> str:
    """The LlamaForCausalLM name of a llama.cpp llama tensor name (llama_gguf_name's inverse)."""
    if gguf_name in _HF_TOP:
        return _HF_TOP[gguf_name]
    _, layer, rest = gguf_name.split(".", 2)  # "blk.3.attn_q.weight"
    return f"model.layers.{layer}.{_HF_LAYER[rest.removesuffix('.weight')]}.weight"


def llama_config_from_gguf(fields: dict[str, Any], vocab_size: int, tied: bool,
                           where: Any) -> ModelConfig:
    """The sllm config of a GGUF file's llama.* keys (vocab_size from token_embd)."""
    for key in _UNSUPPORTED:
        value = fields.get(f"llama.{key}")
        if value not in (None, 0, "none", False) and not (key == "rope.scaling.factor"
                                                          and value == 1.0):
            raise ExportError(f"{where}: llama.{key} = {value!r}; sllm's llama runs plain "
                              f"rotary embeddings, one dense MLP and full attention")
    size = {k: get_int(fields, f"llama.{k}", where) for k in (
        "context_length", "embedding_length", "feed_forward_length", "block_count",
        "attention.head_count", "attention.head_count_kv", "rope.dimension_count",
        "attention.key_length", "attention.value_length", "vocab_size")}
    for key in ("context_length", "embedding_length", "feed_forward_length", "block_count",
                "attention.head_count"):
        if size[key] is None:
            raise FormatError(f"{where}: llama.{key} is missing")
    C, H = size["embedding_length"], size["attention.head_count"]
    D = C // H if H else 0
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if size[key] not in (None, D):
            raise ExportError(f"{where}: llama.{key} {size[key]} is not embedding_length / "
                              f"head_count ({D}); sllm rotates and attends over whole heads")
    if size["vocab_size"] not in (None, vocab_size):
        raise FormatError(f"{where}: llama.vocab_size {size['vocab_size']} but token_embd "
                          f"has {vocab_size} rows")
    theta, eps = (_f32_decimal(get_float(fields, f"llama.{k}", where, d)) for k, d in (
        ("rope.freq_base", 10000.0), ("attention.layer_norm_rms_epsilon", 1e-5)))
    try:
        return ModelConfig(
            architecture="llama", vocab_size=vocab_size, embedding_dim=C,
            num_layers=size["block_count"], num_heads=H,
            num_kv_heads=size["attention.head_count_kv"] or H,
            ffn_hidden_dim=size["feed_forward_length"], max_seq_len=size["context_length"],
            dropout=0.0, rope_theta=theta, norm_eps=eps, tie_embeddings=tied)
    except (ConfigError, TypeError, ValueError) as e:
        raise FormatError(f"{where}: {e}") from None


def _f32_decimal(value: float) -> float:
    """The shortest decimal that a GGUF float32 key stands for (1e-6, not 9.99999997e-07)."""
    return float(str(np.float32(value))) if np.isfinite(value) else value


def needed_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{llama.cpp name: (out, in) shape} of every tensor a llama GGUF of `config` holds."""
    C, F, V, D = config.embedding_dim, config.ffn_hidden_dim, config.vocab_size, config.head_dim
    HD, KD = config.num_heads * D, config.kv_heads * D
    out: dict[str, tuple[int, ...]] = {"token_embd.weight": (V, C), "output_norm.weight": (C,)}
    if not config.tie_embeddings:
        out["output.weight"] = (V, C)
    per_layer = {"attn_norm": (C,), "attn_q": (HD, C), "attn_k": (KD, C), "attn_v": (KD, C),
                 "attn_output": (C, HD), "ffn_norm": (C,), "ffn_gate": (F, C),
                 "ffn_up": (F, C), "ffn_down": (C, F)}
    for i in range(config.num_layers):
        out.update({f"blk.{i}.{n}.weight": s for n, s in per_layer.items()})
    return out


def logical_shape(raw: np.ndarray, ttype: str, name: str, where: Any) -> tuple[int, ...]:
    """A GGUF tensor's shape in values ((out, in) for matrices): a quantized one's bytes
    per row turned back into values."""
    if ttype in ("f32", "f16"):
        return tuple(raw.shape)
    from .quant import BLOCKS, QK
    if ttype not in BLOCKS:
        raise FormatError(f"{where}: tensor {name!r} has type {ttype}; sllm reads f32, f16, "
                          f"q8_0, q4_0 and q4_1")
    size = BLOCKS[ttype].itemsize
    if raw.ndim < 2 or raw.shape[-1] % size:
        raise FormatError(f"{where}: tensor {name!r}: {raw.shape[-1]} bytes per row is not "
                          f"a whole number of {ttype} blocks")
    return (*raw.shape[:-1], raw.shape[-1] // size * QK)


def llama_from_gguf(fields: dict[str, Any], tensors: dict[str, tuple[str, np.ndarray]],
                    file_bytes: int, where: Any) -> tuple[ModelConfig, dict[str, np.ndarray],
                                                          dict[str, tuple[str, np.ndarray]]]:
    """(config, float32 sllm parameters, quantized rows {sllm name: (qtype, uint8 rows)})
    of a GGUF `llama` file, each tensor checked before it is read (module docstring)."""
    from .foreign import check_fits
    if "token_embd.weight" not in tensors:
        raise FormatError(f"{where}: tensor 'token_embd.weight' is missing")
    ttype, raw = tensors["token_embd.weight"]
    vocab = logical_shape(raw, ttype, "token_embd.weight", where)[0]
    config = llama_config_from_gguf(fields, vocab, "output.weight" not in tensors, where)
    check_fits(config, file_bytes, where)  # before any tensor is decoded
    shapes = {n: logical_shape(raw, t, n, where) for n, (t, raw) in tensors.items()}
    match_tensors(shapes, needed_shapes(config), where)
    qnames = _kept_quantized(tensors, config)
    quantized = _quantized_rows({n: tensors[n] for n in qnames}, shapes, config, where)
    floats = _float_tensors({n: t for n, t in tensors.items() if n not in qnames}, shapes,
                            config, where)
    if quantized:  # the floats left are norms and a float embedding: sllm's own names
        return config, floats, quantized
    return config, llama_sllm_tensors(floats, config, str(where)), {}


def _sllm_name(hf_name: str) -> str:
    return hf_name.replace(".q_proj.", ".qkv_proj.").replace(".k_proj.", ".qkv_proj.") \
        .replace(".v_proj.", ".qkv_proj.")


def _kept_quantized(tensors: dict[str, tuple[str, np.ndarray]], config: ModelConfig) -> set[str]:
    """The GGUF names whose blocks an sllm quantized model can hold as they are: all
    matmul weights of one block type (token_embd too when of that type), else none."""
    from .quant import BLOCKS, matmul_weight_names
    matmuls = set(matmul_weight_names(config))
    names = {n for n in tensors if _sllm_name(hf_name_of(n)) in matmuls}
    types = {tensors[n][0] for n in names}
    if len(types) != 1 or not types <= set(BLOCKS):
        return set()
    if tensors["token_embd.weight"][0] in types:
        names.add("token_embd.weight")
    return names


def _quantized_rows(tensors: dict[str, tuple[str, np.ndarray]], shapes: dict[str, Any],
                    config: ModelConfig, where: Any) -> dict[str, tuple[str, np.ndarray]]:
    """{sllm name: (qtype, rows)}: the file's block rows, q and k reordered to
    rotate-half, q | k | v stacked into qkv_proj; NaN scales refused by name."""
    from .finite import check_weights
    rows: dict[str, list[np.ndarray]] = {}
    qtype = ""
    for name in sorted(tensors, key=_qkv_order):
        qtype, raw = tensors[name]
        data = np.ascontiguousarray(raw.reshape(shapes[name][0], -1))
        check_weights({name: data}, where, {name: (qtype, shapes[name])})
        if ".attn_q." in name:
            data = interleaved_to_half(data, config.num_heads)
        elif ".attn_k." in name:
            data = interleaved_to_half(data, config.kv_heads)
        rows.setdefault(_sllm_name(hf_name_of(name)), []).append(data)
    return {n: (qtype, np.concatenate(parts) if len(parts) > 1 else parts[0])
            for n, parts in rows.items()}


def _qkv_order(name: str) -> tuple[str, int]:
    """attn_q, attn_k, attn_v in that order within a layer (qkv_proj's row order)."""
    for k, part in enumerate((".attn_q.", ".attn_k.", ".attn_v.")):
        if part in name:
            return name.replace(part, ".attn_qkv."), k
    return name, 0


def _float_tensors(tensors: dict[str, tuple[str, np.ndarray]], shapes: dict[str, Any],
                   config: ModelConfig, where: Any) -> dict[str, np.ndarray]:
    """{LlamaForCausalLM name: float32 (out, in)} of the tensors, q and k rotate-half."""
    out = {}
    for name, (ttype, raw) in tensors.items():
        arr = decode_tensor(raw, ttype, shapes[name], name, where)
        if ".attn_q." in name:
            arr = interleaved_to_half(arr, config.num_heads)
        elif ".attn_k." in name:
            arr = interleaved_to_half(arr, config.kv_heads)
        out[hf_name_of(name)] = arr
    return out


def quantized_gguf_rows(model: Any) -> dict[str, tuple[np.ndarray, str]]:
    """{llama.cpp name: (uint8 rows, qtype)} of a quantized llama model's blocks: qkv_proj
    split into q, k and v rows, q and k reordered to interleaved pairs."""
    cfg = model.config
    HD, KD = cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    out = {}
    for name, q in model.quantized_weights().items():
        data = np.asarray(q.data)
        if name.endswith("self_attn.qkv_proj.weight"):
            base = name[:-len("qkv_proj.weight")]
            parts = {"q": half_to_interleaved(data[:HD], cfg.num_heads),
                     "k": half_to_interleaved(data[HD:HD + KD], cfg.kv_heads),
                     "v": data[HD + KD:]}
            for p, rows in parts.items():
                out[llama_gguf_name(f"{base}{p}_proj.weight")] = (np.ascontiguousarray(rows), q.qtype)
        else:
            out[llama_gguf_name(name)] = (data, q.qtype)
    return out
