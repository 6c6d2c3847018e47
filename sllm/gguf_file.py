"""An sllm model as a GGUF file for llama.cpp (architecture "gpt2"; the llama family as
"llama" through sllm.gguf_llama), with the `gguf` package.

Tensor names and metadata follow llama.cpp's gpt2 loader (what its convert_hf_to_gguf.py
writes for GPT2LMHeadModel): weights go in transformers' nn.Linear orientation
(out, in) — numpy shape (out, in) is GGUF's ne = [in, out] — so sllm's (in, out) matrices
are transposed; wte and wpe keep their shape. A tied model has no `output.weight` (llama.cpp
then reads token_embd). Types: f32; f16 for matrices; q8_0 / q4_0 blocks (ggml's exact
bytes, from sllm.quant) for matrices whose rows are a multiple of 32, f16 otherwise; 1-D
tensors and position_embd stay f32, as llama.cpp's converter keeps them.
The tokenizer: sllm.gguf_vocab (byte-level BPE as "gpt2"; word and char vocabularies as
SentencePiece "llama" vocabularies, with a warning saying how llama.cpp's own tokenizer
differs).
Every file also carries sllm's own tokenizer JSON under `sllm.tokenizer` and the config
under `sllm.config`, which llama.cpp ignores.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from .errors import ExportError
from .extras import require
from .fileio import atomic_write
from .foreign import check_fits, decode_tensor, match_names
from .gguf_vocab import add_vocab
from .layout import Layout

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7}  # gguf.LlamaFileType
QK = 32  # elements per quantized block
_LAYER_NAMES = {"ln_1.weight": "attn_norm.weight", "ln_1.bias": "attn_norm.bias",
                "attn.c_attn.weight": "attn_qkv.weight", "attn.c_attn.bias": "attn_qkv.bias",
                "attn.c_proj.weight": "attn_output.weight", "attn.c_proj.bias": "attn_output.bias",
                "ln_2.weight": "ffn_norm.weight", "ln_2.bias": "ffn_norm.bias",
                "mlp.c_fc.weight": "ffn_up.weight", "mlp.c_fc.bias": "ffn_up.bias",
                "mlp.c_proj.weight": "ffn_down.weight", "mlp.c_proj.bias": "ffn_down.bias"}
_TOP_NAMES = {"wte": "token_embd.weight", "wpe": "position_embd.weight",
              "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias",
              "lm_head.weight": "output.weight"}


def gguf_name(name: str) -> str:
    """llama.cpp's gpt2 tensor name for an sllm parameter name."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    _, layer, rest = name.split(".", 2)  # "h.3.ln_1.weight"
    return f"blk.{layer}.{_LAYER_NAMES[rest]}"


def gguf_orientation(name: str, p: np.ndarray) -> np.ndarray:
    """The parameter as llama.cpp stores it: matrices (out, in), embeddings as they are."""
    return p if p.ndim == 1 or name in ("wte", "wpe") else p.T


def tensor_type(name: str, arr: np.ndarray, qtype: str) -> str:
    """The GGUF type a tensor gets in a file of type `qtype` (see the module docstring)."""
    if qtype == "f32" or arr.ndim == 1 or name == "wpe":
        return "f32"
    if qtype == "f16" or arr.shape[-1] % QK:
        return "f16"
    return qtype


def encode_tensor(arr: np.ndarray, ttype: str) -> np.ndarray:
    """The tensor's bytes as GGUF holds them: float arrays, or (rows, bytes_per_row) uint8
    blocks for q8_0 / q4_0 / q4_1."""
    if ttype == "f32":
        return np.ascontiguousarray(arr, dtype=np.float32)
    if ttype == "f16":
        return np.ascontiguousarray(arr, dtype=np.float16)
    try:
        from .quant import quantize
    except ImportError:
        raise ExportError(f"{ttype} needs sllm.quant, which this build of sllm lacks") from None
    return quantize(np.ascontiguousarray(arr, dtype=np.float32), ttype)


def gguf_tensors(model: Any, qtype: str = "f32") -> dict[str, tuple[np.ndarray, str]]:
    """{gguf name: (data, type)} for every parameter of `model`. A quantized model's blocks
    go in as they are: sllm keeps them as rows along the reduction axis, GGUF's layout."""
    out = {}
    quantized: dict[str, Any] = getattr(model, "quantized_weights", dict)()
    if model.config.architecture == "llama":
        from .gguf_llama import llama_gguf_arrays, quantized_gguf_rows
        out.update(quantized_gguf_rows(model) if quantized else {})
        for gname, arr in llama_gguf_arrays(model).items():  # a quantized model's floats
            ttype = tensor_type(gname, arr, "f32" if quantized else qtype)
            out[gname] = (encode_tensor(arr, ttype), ttype)
        return out
    for name, q in quantized.items():
        out[gguf_name(name)] = (np.asarray(q.data), q.qtype)
    for name, p in model.parameters().items():  # a quantized model's floats stay f32
        arr = gguf_orientation(name, p)
        ttype = tensor_type(name, arr, "f32" if quantized else qtype)
        out[gguf_name(name)] = (encode_tensor(arr, ttype), ttype)
    return out


def export_gguf(model: Any, path: str | os.PathLike[str], qtype: str = "f32",
                name: str = "sllm") -> dict[str, int]:
    """Write `model` as a GGUF file (atomically); returns how many tensors got each type."""
    gguf = require("gguf")
    if qtype not in GGUF_TYPES:
        raise ExportError(f"--dtype for gguf must be one of {', '.join(GGUF_TYPES)}, "
                          f"got {qtype!r}")
    arch = "llama" if model.config.architecture == "llama" else "gpt2"
    if arch == "gpt2" and model.config.activation != "gelu":
        raise ExportError(f"llama.cpp's gpt2 architecture uses GELU; this model's activation "
                          f"is {model.config.activation!r}, which it cannot express")
    model_qtype = getattr(model, "qtype", None)
    if model_qtype is not None and qtype not in ("f32", model_qtype):
        raise ExportError(f"this model is quantized to {model_qtype}; its GGUF file keeps "
                          f"those blocks (--dtype {model_qtype}), it cannot become {qtype}")
    qtype = model_qtype or qtype
    tensors = gguf_tensors(model, qtype)
    with atomic_write(path) as f:
        writer = gguf.GGUFWriter(f.name, arch)
        _add_metadata(writer, model, qtype, name)
        for tname, (data, ttype) in tensors.items():
            raw = gguf.GGMLQuantizationType[ttype.upper()]
            writer.add_tensor(tname, data, raw_dtype=raw if ttype.startswith("q") else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()  # its own handle on the temp file; atomic_write fsyncs and renames
    counts: dict[str, int] = {}
    for _, ttype in tensors.values():
        counts[ttype] = counts.get(ttype, 0) + 1
    return counts


def _add_metadata(writer: Any, model: Any, qtype: str, name: str) -> None:
    cfg = model.config
    writer.add_name(name)
    if cfg.architecture == "llama":
        from .gguf_llama import add_llama_metadata
        add_llama_metadata(writer, cfg)
    else:
        writer.add_context_length(cfg.max_seq_len)
        writer.add_embedding_length(cfg.embedding_dim)
        writer.add_feed_forward_length(cfg.ffn_hidden_dim)
        writer.add_block_count(cfg.num_layers)
        writer.add_head_count(cfg.num_heads)
        writer.add_layer_norm_eps(1e-5)
        writer.add_vocab_size(cfg.vocab_size)  # llama.cpp's only n_vocab without a vocabulary
    writer.add_file_type(FILE_TYPES[qtype])
    writer.add_string("sllm.config", json.dumps(cfg.to_dict()))
    if model.tokenizer:
        writer.add_string("sllm.tokenizer", json.dumps(model.tokenizer, ensure_ascii=False))
        note = add_vocab(writer, model.tokenizer, cfg.vocab_size)
        if note:  # what llama.cpp's own tokenizer does differently: `sllm export` shows it
            warnings.warn(note, stacklevel=3)
    else:
        writer.add_tokenizer_model("no_vocab")


def read_gguf(path: str | os.PathLike[str]) -> dict[str, Any]:
    """{"tensors": {name: (type, data)}, "fields": {key: value}} of a GGUF file, for checks
    and `import`: data as GGUFReader gives it (floats, or uint8 blocks)."""
    gguf = require("gguf")
    size = os.path.getsize(path)
    try:  # gguf's reader trusts the file: any exception of a mutated one means unreadable
        reader = gguf.GGUFReader(os.fspath(path))
        tensors = {t.name: (t.tensor_type.name.lower(), _within(t, size, path))
                   for t in reader.tensors}
        fields = {key: field.contents() for key, field in reader.fields.items()
                  if key.startswith(("sllm.", "general.", "gpt2.", "llama.", "tokenizer.ggml."))}
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - IndexError, struct.error, OverflowError, ...
        raise ExportError(f"{path}: not a readable GGUF file: {type(e).__name__}: {e}") from None
    return {"tensors": tensors, "fields": fields}


def _within(t: Any, size: int, path: Any) -> np.ndarray:
    """A tensor's data, once its span is known to lie inside the file."""
    start, nbytes = int(t.data_offset), int(t.n_bytes)
    relative = int(t.field.parts[-1][0])  # as stored: gguf adds it to the data start in uint64
    if start < 0 or nbytes < 0 or relative + nbytes > size or start + nbytes > size:
        raise ExportError(f"{path}: tensor {t.name!r} at offset {start} with {nbytes} bytes "
                          f"runs past the end of the file ({size} bytes)")
    data = np.asarray(t.data)
    if data.nbytes != nbytes:
        raise ExportError(f"{path}: tensor {t.name!r} holds {data.nbytes} bytes, its header "
                          f"says {nbytes}")
    return data


def import_gguf(path: str | os.PathLike[str], backend: Any = "numpy") -> Any:
    """An SLLM from a GGUF file of architecture gpt2 or llama (f32 and f16 exactly; q8_0 /
    q4_0 / q4_1 dequantized to float32, except a llama file's blocks of one type, which
    make a quantized model: sllm.gguf_llama), with the tokenizer sllm wrote into it or, for a
    foreign llama file, its SentencePiece vocabulary (sllm.gguf_llama)."""
    from .model import SLLM
    data = read_gguf(path)
    fields, tensors = data["fields"], data["tensors"]
    arch = fields.get("general.architecture")
    quantized: dict[str, tuple[str, np.ndarray]] = {}
    if arch == "llama":
        from .gguf_llama import llama_from_gguf
        config, params, quantized = llama_from_gguf(fields, tensors, os.path.getsize(path), path)
    elif arch == "gpt2":
        config, params = _gpt2_from_gguf(fields, tensors, path)
    else:
        raise ExportError(f"{path}: architecture {arch!r}; sllm imports gpt2 and llama GGUF "
                          f"files only")
    tok, note = _gguf_tokenizer(fields, config.vocab_size, path)
    model = SLLM(config, backend=backend, init=None, quantized=quantized or None)
    for name, param in model.parameters().items():
        param[...] = params[name]
    model.tokenizer = tok
    model.metadata = {"imported_from": os.fspath(path), **({"tokenizer_note": note} if note else {})}
    return model.eval()


def _gpt2_from_gguf(fields: dict[str, Any], tensors: dict[str, Any],
                    path: Any) -> tuple[Any, dict[str, np.ndarray]]:
    from .config import ModelConfig
    from .errors import ConfigError, FormatError
    try:
        config = ModelConfig.from_dict(json.loads(fields["sllm.config"])) \
            if "sllm.config" in fields else _config_from_fields(fields, tensors)
    except (ConfigError, KeyError, ValueError, TypeError, AttributeError, IndexError,
            RecursionError) as e:
        raise FormatError(f"{path}: cannot build a config from its metadata: {e!r}") from None
    check_fits(config, os.path.getsize(path), path)  # before the layout or the model exist
    slots = Layout(config).slots
    match_names(tensors, {gguf_name(n): None for n in slots}, path)
    params = {}
    for name, slot in slots.items():
        gname = gguf_name(name)
        ttype, raw = tensors[gname]
        shape = slot.shape if len(slot.shape) == 1 or name in ("wte", "wpe") else slot.shape[::-1]
        params[name] = gguf_orientation(name, decode_tensor(raw, ttype, shape, gname, path))
    return config, params


def _gguf_tokenizer(fields: dict[str, Any], vocab_size: int,
                    path: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(tokenizer dict, note): sllm's own when it wrote the file, else None and why."""
    if fields.get("sllm.tokenizer"):
        return _tokenizer_field(fields["sllm.tokenizer"], path), None
    model = fields.get("tokenizer.ggml.model")
    if model == "llama":  # SentencePiece pieces and scores: sllm's spm tokenizer
        from .gguf_vocab import spm_from_fields
        return spm_from_fields(fields, vocab_size, path), None
    if model in (None, "no_vocab"):
        return None, "the file has no vocabulary; token ids are the file's"
    return None, (f"the file's {model!r} vocabulary is not converted; token ids are the "
                  f"file's")


def _tokenizer_field(text: Any, path: Any) -> dict[str, Any] | None:
    """sllm.tokenizer: JSON of a tokenizer sllm can build, or absent."""
    from . import tokenizer as tokenizers
    from .errors import FormatError
    if not text:
        return None
    try:
        doc = json.loads(text) if isinstance(text, str) else None
        tokenizers.from_dict(doc)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as e:
        raise FormatError(f"{path}: sllm.tokenizer is not a usable tokenizer ({e!r})") from None
    return doc


def _config_from_fields(fields: dict[str, Any], tensors: dict[str, Any]) -> Any:
    from .config import ModelConfig
    return ModelConfig(vocab_size=tensors["token_embd.weight"][1].shape[0],
                       embedding_dim=fields["gpt2.embedding_length"],
                       num_layers=fields["gpt2.block_count"],
                       num_heads=fields["gpt2.attention.head_count"],
                       ffn_hidden_dim=fields["gpt2.feed_forward_length"],
                       max_seq_len=fields["gpt2.context_length"], dropout=0.0,
                       tie_embeddings="output.weight" not in tensors)
