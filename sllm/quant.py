"""Block quantization in ggml's exact formats: q8_0, q4_0 and q4_1.

A row of K float32 values is cut into blocks of 32 along K (the reduction axis of a
matmul). Each block stores float16 scale(s) and 32 small integers:

| type | block bytes | layout (ggml-common.h)                      | value of element j         |
| ---- | ----------- | ------------------------------------------- | -------------------------- |
| q8_0 | 34          | `{half d; int8 qs[32];}`                   | `qs[j] * d`                |
| q4_0 | 18          | `{half d; uint8 qs[16];}` (two nibbles/byte) | `(q[j] - 8) * d`          |
| q4_1 | 20          | `{half d; half m; uint8 qs[16];}`           | `q[j] * d + m`             |

In the 4-bit types byte i holds q[i] in its low nibble and q[i + 16] in its high nibble.
q4_1 is the "scale and zero point" form: m is the block minimum, d its step.

`quantize` produces byte for byte what ggml's reference quantizers (and the PyPI `gguf`
package's `gguf.quants.quantize`) produce for rows whose length is a multiple of 32.

Choices for input ggml leaves undefined:
- K not a multiple of 32: each row is padded with zeros up to the next multiple of 32
  (zeros add nothing to a dot product); `dequantize(data, qtype, K)` drops the padding.
- NaN or +-inf anywhere, or a finite value whose block scale (or q4_1 minimum) does not
  fit in float16 (|x| beyond about 65504 * 127 for q8_0, 65504 * 8 for q4_0): a
  `QuantizationError` naming the row and column, instead of a silently broken block.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import QuantizationError

QK = 32  # elements per block, as ggml's QK8_0 / QK4_0 / QK4_1

BLOCK_Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", (QK,))])
BLOCK_Q4_0 = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
BLOCK_Q4_1 = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (QK // 2,))])
assert BLOCK_Q8_0.itemsize == 2 + QK, "block_q8_0 must be 34 bytes"
assert BLOCK_Q4_0.itemsize == 2 + QK // 2, "block_q4_0 must be 18 bytes"
assert BLOCK_Q4_1.itemsize == 4 + QK // 2, "block_q4_1 must be 20 bytes"

BLOCKS: dict[str, np.dtype] = {"q8_0": BLOCK_Q8_0, "q4_0": BLOCK_Q4_0, "q4_1": BLOCK_Q4_1}
QTYPES: tuple[str, ...] = tuple(BLOCKS)
_F16_MAX = float(np.finfo(np.float16).max)


def block_dtype(qtype: str) -> np.dtype:
    """The numpy structured dtype of one block of `qtype`; raises on an unknown type."""
    try:
        return BLOCKS[qtype]
    except (KeyError, TypeError):
        raise QuantizationError(f"unknown quantization type {qtype!r}; expected one of "
                                f"{', '.join(QTYPES)}") from None


def blocks_per_row(K: int) -> int:
    """Blocks in a row of K values (the last one zero-padded when K % 32 != 0)."""
    if K < 1:
        raise QuantizationError(f"row length K must be positive, got {K}")
    return -(-K // QK)


def bytes_per_row(qtype: str, K: int) -> int:
    """Bytes of one quantized row of K values."""
    return blocks_per_row(K) * block_dtype(qtype).itemsize


def _roundf(v: np.ndarray) -> np.ndarray:
    """C's roundf (half away from zero), exact in float32."""
    a = np.abs(v)
    t = np.floor(a)
    return np.copysign(t + (a - t >= np.float32(0.5)), v)


def _blocks(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Validate x (rows, K) and return it as float32 blocks (rows * nb, 32), zero-padded."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise QuantizationError(f"expected a (rows, K) array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise QuantizationError(f"expected float values, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    rows, K = x.shape
    nb = blocks_per_row(K)
    finite = np.isfinite(x)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise QuantizationError(f"cannot quantize non-finite value {x[r, c]} at row {r}, column {c}")
    if nb * QK != K:
        x = np.concatenate([x, np.zeros((rows, nb * QK - K), np.float32)], axis=1)
    return np.ascontiguousarray(x).reshape(rows * nb, QK), nb


def _check_f16(values: np.ndarray, what: str, qtype: str, nb: int) -> None:
    """Refuse block scales that overflow float16 (ggml would store inf)."""
    bad = np.abs(values.astype(np.float64)) > _F16_MAX
    if bad.any():
        i = int(np.argmax(bad))
        raise QuantizationError(f"{qtype}: block {i % nb} of row {i // nb} needs {what} "
                                f"{float(values[i]):.6g}, beyond float16's range {_F16_MAX}")


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d in float32, 0 where d == 0 (ggml's `id = d ? 1.0f/d : 0.0f`); inf for subnormal d."""
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) values 0..15 -> (n, 16) bytes: q[j] low nibble, q[j + 16] high nibble."""
    return q[:, :QK // 2] | (q[:, QK // 2:] << np.uint8(4))


def _quantize_q8_0(b: np.ndarray, out: np.ndarray, nb: int) -> None:
    _check_f16(np.abs(b).max(axis=1) / np.float32(127), "scale", "q8_0", nb)
    _quantize_q8_0_unchecked(b, out)


def _quantize_q8_0_unchecked(b: np.ndarray, out: np.ndarray) -> None:
    d = np.abs(b).max(axis=1) / np.float32(127)
    inv = _inverse(d)
    with np.errstate(invalid="ignore"):
        v = b * inv[:, None]
    # A subnormal d has an infinite 1/d; its fp16 scale is 0, so the codes do not matter:
    # write 0, which is what ggml's float-to-int8 conversion gives on x86.
    out["d"] = d.astype(np.float16)
    out["qs"] = np.where(np.isfinite(v), _roundf(np.nan_to_num(v)), 0).astype(np.int8)


def _quantize_q4_0(b: np.ndarray, out: np.ndarray, nb: int) -> None:
    imax = np.abs(b).argmax(axis=1)  # first of the largest magnitudes, as ggml's strict <
    d = b[np.arange(len(b)), imax] / np.float32(-8)
    _check_f16(d, "scale", "q4_0", nb)
    inv = _inverse(d)
    with np.errstate(invalid="ignore", over="ignore"):
        v = b * inv[:, None] + np.float32(8.5)  # (int8)(x * id + 8.5f), in float32
    q = np.clip(np.nan_to_num(np.trunc(v)), 0, 15).astype(np.uint8)
    out["d"] = d.astype(np.float16)
    out["qs"] = _pack_nibbles(q)


def _quantize_q4_1(b: np.ndarray, out: np.ndarray, nb: int) -> None:
    lo, hi = b.min(axis=1), b.max(axis=1)
    d = (hi - lo) / np.float32(15)
    _check_f16(d, "scale", "q4_1", nb)
    _check_f16(lo, "minimum", "q4_1", nb)
    inv = _inverse(d)
    with np.errstate(invalid="ignore", over="ignore"):
        v = (b - lo[:, None]) * inv[:, None] + np.float32(0.5)
    q = np.clip(np.nan_to_num(np.trunc(v)), 0, 15).astype(np.uint8)
    out["d"] = d.astype(np.float16)
    out["m"] = lo.astype(np.float16)
    out["qs"] = _pack_nibbles(q)


_QUANTIZERS = {"q8_0": _quantize_q8_0, "q4_0": _quantize_q4_0, "q4_1": _quantize_q4_1}


def quantize(x: np.ndarray, qtype: str) -> np.ndarray:
    """Quantize float rows x (rows, K) to uint8 (rows, bytes_per_row(qtype, K)).

    A 1-D x is one row. Rows are cut into blocks of 32 (the last zero-padded when K is
    not a multiple of 32). Raises QuantizationError on NaN/inf or a scale float16
    cannot hold.
    """
    dt = block_dtype(qtype)
    b, nb = _blocks(x)
    out = np.zeros(len(b), dt)
    _QUANTIZERS[qtype](b, out, nb)
    return out.view(np.uint8).reshape(len(b) // nb, nb * dt.itemsize)


def _as_blocks(data: np.ndarray, qtype: str, K: int) -> np.ndarray:
    """View uint8 (rows, bytes_per_row) as structured blocks (rows, nb), checking sizes."""
    dt = block_dtype(qtype)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2:
        raise QuantizationError(f"expected uint8 (rows, bytes) data, got {data.dtype} {data.shape}")
    nb = blocks_per_row(K)
    if data.shape[1] != nb * dt.itemsize:
        raise QuantizationError(f"{qtype} rows of K={K} take {nb * dt.itemsize} bytes, "
                                f"got {data.shape[1]}")
    return np.ascontiguousarray(data).view(dt)


def unpack_q(data: np.ndarray, qtype: str, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Split quantized rows into integer codes and scales, for integer dot products.

    Returns (q (rows, nb, 32) int8 holding the stored integers: q8_0 signed, q4_0 already
    minus 8, q4_1 0..15; d (rows, nb) float32; m (rows, nb) float32 for q4_1 else None).
    """
    blk = _as_blocks(data, qtype, K)
    d = blk["d"].astype(np.float32)
    if qtype == "q8_0":
        return blk["qs"].astype(np.int8), d, None
    qs = blk["qs"]
    q = np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1).astype(np.int8)
    if qtype == "q4_0":
        return q - np.int8(8), d, None
    return q, d, blk["m"].astype(np.float32)


def dequantize(data: np.ndarray, qtype: str, K: int) -> np.ndarray:
    """Float32 values (rows, K) of quantized rows data (uint8, (rows, bytes_per_row))."""
    q, d, m = unpack_q(data, qtype, K)
    x = q.astype(np.float32) * d[..., None]
    if m is not None:
        x += m[..., None]
    return x.reshape(len(x), -1)[:, :K]


# Floats of a dequantized slice that matmul_q_bwd holds at once (4 MiB): the backward of a
# quantized matmul never materialises the whole float matrix. (1 MiB made wasm-simd's
# backward through medium-model's lm_head (512 x 256 x 8000) 1.7x slower: 32-column
# slices, each repacking all of dout; cpp the same either way. Alternating, 2026-12-04.)
DEQUANT_CHUNK_FLOATS = 1 << 20


def chunk_columns(OC: int, K: int, budget: int = DEQUANT_CHUNK_FLOATS) -> int:
    """Columns of an (OC, K) quantized matrix to dequantize at once: whole blocks (a
    multiple of 32), at most `budget` floats when one block column fits, never past K's
    padded width."""
    blocks = max(1, budget // (max(OC, 1) * QK))
    return min(blocks, blocks_per_row(K)) * QK


def column_slices(data: np.ndarray, qtype: str, K: int,
                  budget: int = DEQUANT_CHUNK_FLOATS) -> Iterator[tuple[int, int, np.ndarray]]:
    """(k0, k1, rows) for the column slices [k0, k1) of quantized rows `data` (OC, bytes):
    `rows` holds the slice's blocks of every row (uint8 (OC, bytes of k1 - k0 values)),
    for dequantize(rows, qtype, k1 - k0); slices of chunk_columns(OC, K, budget)."""
    data = np.asarray(data)
    size = block_dtype(qtype).itemsize
    step = chunk_columns(len(data), K, budget)
    for k0 in range(0, K, step):
        k1 = min(K, k0 + step)
        yield k0, k1, np.ascontiguousarray(data[:, k0 // QK * size:blocks_per_row(k1) * size])


def quantize_q8_0_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Activations (N, K) as q8_0 blocks for integer dot products, without input checks.

    Returns (q (N, nb, 32) int8, d (N, nb) float32 holding the float16-rounded scales):
    what a matmul kernel computes on the fly (ggml's quantize_row_q8_0), K zero-padded.
    """
    x = np.asarray(x, dtype=np.float32)
    N, K = x.shape
    nb = blocks_per_row(K)
    if nb * QK != K:
        x = np.concatenate([x, np.zeros((N, nb * QK - K), np.float32)], axis=1)
    b = x.reshape(N * nb, QK)
    out = np.zeros(len(b), BLOCK_Q8_0)
    with np.errstate(all="ignore"):
        _quantize_q8_0_unchecked(b, out)
    return out["qs"].reshape(N, nb, QK), out["d"].astype(np.float32).reshape(N, nb)


# ---- quantized model weights ------------------------------------------------------------
@dataclass
class QTensor:
    """A quantized weight: `data` uint8 (rows, bytes_per_row) holding rows of K values.

    Matmul weights are stored (in, out) = (K, OC) in sllm, so their quantized form holds
    the transpose, (OC, K): each row runs along the reduction axis. A tied `wte` (V, C) is
    already rows along C.
    """

    qtype: str
    rows: np.ndarray | None  # ggml's rows; None when `packed` alone holds them
    shape: tuple[int, int]  # (rows, K) of the float matrix the rows came from
    packed: Any = None  # the same rows as the backend's kernels read them (Backend.pack_q)
    unpack: Callable[[Any, str], np.ndarray] | None = None  # packed -> ggml's rows

    @property
    def data(self) -> np.ndarray:
        """ggml's rows (what files hold): kept, or read back from the packed copy (a model
        keeps one copy of its quantized weights, not both)."""
        if self.rows is not None:
            return self.rows
        assert self.unpack is not None, "packed rows without a way back"
        return self.unpack(self.packed, self.qtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized data (ggml's rows)."""
        return self.shape[0] * bytes_per_row(self.qtype, self.shape[1])

    @property
    def kernel_rows(self) -> Any:
        """What matmul_q_fwd and decode_block are given: the packed rows, else ggml's."""
        return self.rows if self.packed is None else self.packed

    def dequantize(self) -> np.ndarray:
        """The float32 (rows, K) matrix these blocks stand for."""
        return dequantize(self.data, self.qtype, self.shape[1])


_LAYER_MATMULS = {
    "gpt2": ("h.{i}.attn.c_attn.weight", "h.{i}.attn.c_proj.weight", "h.{i}.mlp.c_fc.weight",
             "h.{i}.mlp.c_proj.weight"),
    "llama": ("model.layers.{i}.self_attn.qkv_proj.weight",
              "model.layers.{i}.self_attn.o_proj.weight", "model.layers.{i}.mlp.gate_proj.weight",
              "model.layers.{i}.mlp.up_proj.weight", "model.layers.{i}.mlp.down_proj.weight"),
}


def matmul_weight_names(cfg: Any) -> list[str]:
    """The weights `SLLM.quantize` quantizes: every linear layer's (four per GPT-2 layer,
    five per llama layer) and the output head (the tied token embedding when embeddings
    are tied). Embeddings, norms and biases stay float32."""
    from .layout import head_name
    names = [w.format(i=i) for i in range(cfg.num_layers)
             for w in _LAYER_MATMULS[getattr(cfg, "architecture", "gpt2")]]
    return names + [head_name(cfg)]


def quantized_weight_names(cfg: Any, embeddings: bool = True) -> list[str]:
    """The weights `SLLM.quantize` quantizes: the matmul weights and, unless `embeddings`
    is False, the token embedding (lookups dequantize the rows they need, as ggml's
    get_rows). wpe, norms and biases always stay float32."""
    from .layout import embedding_name
    names, embed = matmul_weight_names(cfg), embedding_name(cfg)
    return names + [embed] if embeddings and embed not in names else names


def quantize_weight(name: str, w: np.ndarray, qtype: str) -> np.ndarray:
    """Quantize parameter `name` to (rows along K) blocks; errors name the tensor."""
    from .layout import EMBEDDINGS
    rows = w if name in EMBEDDINGS else w.T
    try:
        return quantize(rows, qtype)
    except QuantizationError as e:
        raise QuantizationError(f"tensor {name!r}: {e}") from None
