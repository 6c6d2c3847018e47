"""Import a llama2.c model file (karpathy/llama2.c, the layout run.c memory-maps) as an
sllm llama model.

The file: a header of 7 little-endian int32 (run.c's Config) -- dim, hidden_dim, n_layers,
n_heads, n_kv_heads, vocab_size (negative: the classifier is not shared with the
embedding), seq_len -- then float32 tensors in run.c's order, each (out, in) row-major as
torch's nn.Linear: token_embedding_table (V, C); rms_att_weight (L, C); wq (L, H*D, C);
wk, wv (L, Hkv*D, C); wo (L, C, H*D); rms_ffn_weight (L, C); w1, w3 (L, F, C) (gate, up);
w2 (L, C, F) (down); rms_final_weight (C); freq_cis_real and freq_cis_imag (seq_len*D/2
each, recomputed by sllm, skipped); wcls (V, C) only when unshared. RMSNorm eps is run.c's
1e-5, rope theta 10000.

RoPE: run.c rotates interleaved pairs (x[2i], x[2i+1]) of each head; sllm (as Hugging Face)
rotates halves (x[i], x[i+D/2]). Both use the angle pos * 10000**(-2i/D) for pair i, so
reordering each head's wq and wk output rows -- new row i <- old 2i, new row i+D/2 <- old
2i+1 -- makes the rotate-half model compute the same q.k scores: the attention dot
product is a sum over all D components, so any common permutation of q's and k's
components leaves it unchanged. v and wo are not permuted. This is the inverse of
llama2.c's export.py `permute_reverse` (and the permute of HF's
convert_llama_weights_to_hf).

The tensors then go through sllm.hf_llama's LlamaForCausalLM mapping, so the shape checks
and the fused qkv layout are the HF importer's own.

tokenizer.bin (run.c's build_tokenizer): int32 max_token_length, then per token of the
model's vocab_size: float32 score, int32 length, that many bytes (UTF-8; spaces as " ",
byte tokens as "<0xXX>"). It becomes sllm's SPMTokenizer (run.c's encode and decode;
[UNK] 0, [BOS] 1, [EOS] 2). Every length is checked against max_token_length and the
bytes left before it is read, and the file must end with the last token.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig
from .errors import ConfigError, FormatError
from .foreign import check_fits
from .hf_llama import llama_sllm_tensors

HEADER = struct.Struct("<7i")
TOKEN_HEAD = struct.Struct("<fi")  # tokenizer.bin: score, length
FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


def read_header(path: Path, size: int) -> tuple[ModelConfig, dict[str, int], bool]:
    """The sllm config of the file's header, the header's fields (vocab_size made
    positive) and whether the classifier is shared; every field checked, and the file's
    size required to be exactly what the header implies."""
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise FormatError(f"{path}: {size} bytes, shorter than llama2.c's 28-byte header")
    if head[:2] == b"PK":
        raise FormatError(f"{path}: a zip archive (a torch pickle?), not a llama2.c model; "
                          f"sllm never unpickles")
    h = dict(zip(FIELDS, HEADER.unpack(head), strict=True))
    shared = h["vocab_size"] > 0
    h["vocab_size"] = abs(h["vocab_size"])
    for name, value in h.items():
        if value <= 0:
            raise FormatError(f"{path}: header field {name} is {value}; it must be positive")
    C, H, Hkv = h["dim"], h["n_heads"], h["n_kv_heads"]
    if C % H or (C // H) % 2 or H % Hkv:
        raise FormatError(f"{path}: dim {C}, n_heads {H}, n_kv_heads {Hkv}: dim must be a "
                          f"multiple of n_heads with an even head size, n_heads a multiple "
                          f"of n_kv_heads")
    expected = HEADER.size + 4 * _float_count(h, shared)
    if size != expected:
        raise FormatError(f"{path}: {size:,} bytes; the header ({_describe(h)}) needs exactly "
                          f"{expected:,} (truncated, or not a llama2.c model)")
    try:
        config = ModelConfig(
            architecture="llama", vocab_size=h["vocab_size"], embedding_dim=C,
            num_layers=h["n_layers"], num_heads=H, num_kv_heads=Hkv,
            ffn_hidden_dim=h["hidden_dim"], max_seq_len=h["seq_len"], dropout=0.0,
            rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=shared)
    except (ConfigError, TypeError, ValueError) as e:
        raise FormatError(f"{path}: {e}") from None
    return config, h, shared


def _describe(h: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in h.items())


def _shapes(h: dict[str, int], shared: bool) -> list[tuple[str, tuple[int, ...]]]:
    """run.c's tensors in file order with their shapes ((out, in) for matrices)."""
    C, F, L, V = h["dim"], h["hidden_dim"], h["n_layers"], h["vocab_size"]
    D = C // h["n_heads"]
    HD, KD = h["n_heads"] * D, h["n_kv_heads"] * D
    out = [("token_embedding_table", (V, C)), ("rms_att_weight", (L, C)),
           ("wq", (L, HD, C)), ("wk", (L, KD, C)), ("wv", (L, KD, C)), ("wo", (L, C, HD)),
           ("rms_ffn_weight", (L, C)), ("w1", (L, F, C)), ("w2", (L, C, F)),
           ("w3", (L, F, C)), ("rms_final_weight", (C,)),
           ("freq_cis_real", (h["seq_len"] * D // 2,)), ("freq_cis_imag", (h["seq_len"] * D // 2,))]
    return out + ([] if shared else [("wcls", (V, C))])


def _float_count(h: dict[str, int], shared: bool) -> int:
    return sum(int(np.prod(s, dtype=object)) for _, s in _shapes(h, shared))


def interleaved_to_half(w: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's output rows of w (heads*D, C) from run.c's interleaved rotary
    pairs to rotate-half: new row i <- old 2i, new row i + D/2 <- old 2i + 1."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _hf_tensors(raw: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """run.c's tensors under LlamaForCausalLM's names, q and k rows made rotate-half."""
    out = {"model.embed_tokens.weight": raw["token_embedding_table"],
           "model.norm.weight": raw["rms_final_weight"]}
    if "wcls" in raw:
        out["lm_head.weight"] = raw["wcls"]
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = raw["rms_att_weight"][i]
        out[p + "self_attn.q_proj.weight"] = interleaved_to_half(raw["wq"][i], config.num_heads)
        out[p + "self_attn.k_proj.weight"] = interleaved_to_half(raw["wk"][i], config.kv_heads)
        out[p + "self_attn.v_proj.weight"] = raw["wv"][i]
        out[p + "self_attn.o_proj.weight"] = raw["wo"][i]
        out[p + "post_attention_layernorm.weight"] = raw["rms_ffn_weight"][i]
        out[p + "mlp.gate_proj.weight"] = raw["w1"][i]
        out[p + "mlp.up_proj.weight"] = raw["w3"][i]
        out[p + "mlp.down_proj.weight"] = raw["w2"][i]
    return out


def read_tokenizer_bin(path: Path, vocab_size: int) -> Any:
    """The SPMTokenizer of a llama2.c tokenizer.bin for a model of `vocab_size` tokens."""
    from .errors import DataError
    from .tokenizer import SPMTokenizer
    data = path.read_bytes() if path.stat().st_size <= 64 * (vocab_size + 1) + 4 else None
    if data is None:  # a piece is at most a few dozen bytes: no vocabulary needs more
        raise FormatError(f"{path}: {path.stat().st_size:,} bytes, too large for a tokenizer "
                          f"of {vocab_size:,} tokens")
    if len(data) < 4:
        raise FormatError(f"{path}: {len(data)} bytes, shorter than tokenizer.bin's header")
    (max_len,) = struct.unpack_from("<i", data)
    pieces, scores, at = [], [], 4
    for i in range(vocab_size):
        if at + TOKEN_HEAD.size > len(data):
            raise FormatError(f"{path}: ends at token {i}; the model has {vocab_size} tokens")
        score, n = TOKEN_HEAD.unpack_from(data, at)
        at += TOKEN_HEAD.size
        if not 0 <= n <= max_len or at + n > len(data):
            raise FormatError(f"{path}: token {i} has length {n} (max_token_length {max_len}, "
                              f"{len(data) - at} bytes left)")
        try:
            pieces.append(data[at:at + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise FormatError(f"{path}: token {i} is not UTF-8 ({data[at:at + n]!r})") from None
        scores.append(score)
        at += n
    if at != len(data):
        raise FormatError(f"{path}: {len(data) - at} bytes after the last of {vocab_size} tokens "
                          f"(a tokenizer for another vocabulary size?)")
    try:
        return SPMTokenizer(pieces, scores)
    except DataError as e:
        raise FormatError(f"{path}: {e}") from None


def import_llama2c(path: str | os.PathLike[str], backend: Any = "numpy") -> Any:
    """An SLLM (eval mode) from a llama2.c model file, with the tokenizer.bin beside it
    (read_tokenizer_bin) when there is one; without it the model has no tokenizer and its
    metadata says so."""
    from .model import SLLM
    src = Path(path)
    try:
        size = src.stat().st_size
        config, h, shared = read_header(src, size)
        check_fits(config, size, src)  # the memory budget, before any allocation
        raw: dict[str, np.ndarray] = {}
        with open(src, "rb") as f:
            f.seek(HEADER.size)
            for name, shape in _shapes(h, shared):
                count = int(np.prod(shape))  # the exact file size was checked: all present
                raw[name] = np.fromfile(f, dtype="<f4", count=count).reshape(shape)
    except OSError as e:
        raise FormatError(f"{path}: cannot read it ({e.strerror or e})") from None
    tensors = llama_sllm_tensors(_hf_tensors(raw, config), config, str(src))
    model = SLLM(config, backend=backend, init=None)
    for name, param in model.parameters().items():
        param[...] = tensors[name]
    model.metadata = {"imported_from": str(src), "format": "llama2.c"}
    tok_path = src.parent / "tokenizer.bin"
    if tok_path.is_file():
        model.tokenizer = read_tokenizer_bin(tok_path, config.vocab_size).to_dict()
        model.metadata["tokenizer_from"] = str(tok_path)
    else:
        model.tokenizer = None
        model.metadata["tokenizer_note"] = ("token ids are llama2.c's; no tokenizer.bin beside "
                                            "the model file")
    return model.eval()
