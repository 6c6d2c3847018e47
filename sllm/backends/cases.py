"""The conformance cases: for every kernel of the contract, the awkward shapes to try
(sizes that are not multiples of a SIMD width, T = 1, one head, a large vocabulary) and a
builder of its arguments; and the small models that check the whole forward, backward and
generation. sllm/backends/conformance.py runs them on a backend and on the reference.

Adding a kernel: one `KernelCases` entry in `CASES` (tests/test_kernels.py fails until
every kernel of the contract has one); the shapes a model hands it, which `sllm bench`
times, go in sllm/bench_shapes.py.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Backend, decode_block_workspace, llama_decode_block_workspace

RTOL, ATOL = 1e-4, 1e-5
Args = list[Any]


@dataclass(frozen=True)
class KernelCases:
    """How to check one kernel: the shapes to try and how to build its arguments.

    `args(rng, **shape)` returns the argument list for the reference (numpy arrays and
    scalars); `outputs` are the indices of the arguments to compare afterwards. `aliases`
    lists (i, j) pairs applied to shapes marked in_place=True: argument j becomes the same
    array as argument i.
    `setup(backend, args)` may replace arguments with state that backend produces itself
    (attention_bwd takes the `saved` state of the backend's own attention_fwd).
    """

    shapes: list[dict[str, Any]]
    args: Callable[..., Args]
    outputs: tuple[int, ...]
    rtol: float = RTOL
    atol: float = ATOL
    aliases: tuple[tuple[int, int], ...] = ()
    setup: Callable[[Backend, Args], None] | None = None
    returns: bool = False  # the kernel returns a value (grad_norm_sq), compared too

    def largest(self) -> tuple[int, dict[str, Any]]:
        """The index and shape (without in_place) of the biggest case, the one timed."""
        index = max(range(len(self.shapes)), key=lambda i: _work(self.shapes[i]))
        return index, {k: v for k, v in self.shapes[index].items() if k != "in_place"}



@dataclass(frozen=True)
class PackedRows:
    """Quantized rows a case gives each backend as that backend stores a model's weights
    (Backend.pack_q of its own copy): the reference gets ggml's rows, cpp its packed form."""

    rows: np.ndarray
    qtype: str

@dataclass(frozen=True)
class PackedFloats:
    """A float matmul weight a case gives each backend as its batched decode step holds it
    (Backend.pack_weight of its own copy): the reference gets the array itself."""

    weight: np.ndarray
    trans_w: bool = False

def case_label(shape: dict[str, Any]) -> str:
    """A short label for a shape: "N=7 C=17"."""
    return " ".join(f"{k}={v}" for k, v in shape.items())

def case_rng(kernel: str, index: int) -> np.random.Generator:
    """A generator seeded by the case, so every run (and every backend) sees the same data."""
    return np.random.default_rng(zlib.crc32(f"{kernel}:{index}".encode()))

# ---- argument builders ---------------------------------------------------------------------
def _f(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _tokens(rng: np.random.Generator, V: int, *shape: int) -> np.ndarray:
    tokens = rng.integers(0, V, shape).astype(np.int32)
    tokens.flat[0] = tokens.flat[-1]  # a repeated token accumulates twice in backward
    return tokens


def _encoder_fwd(rng: np.random.Generator, B: int, T: int, V: int, C: int, pos: int) -> Args:
    return [_f(rng, B, T, C), _tokens(rng, V, B, T), _f(rng, V, C), _f(rng, T + pos + 2, C), pos]


def _encoder_bwd(rng: np.random.Generator, B: int, T: int, V: int, C: int, pos: int) -> Args:
    return [_f(rng, V, C), _f(rng, T + pos + 2, C), _f(rng, B, T, C), _tokens(rng, V, B, T), pos]


def _layernorm_fwd(rng: np.random.Generator, N: int, C: int) -> Args:
    return [_f(rng, N, C), _f(rng, N), _f(rng, N), _f(rng, N, C) * 3 + 1, _f(rng, C), _f(rng, C)]


def _layernorm_bwd(rng: np.random.Generator, N: int, C: int) -> Args:
    x = _f(rng, N, C) * 3 + 1
    mean, rstd = x.mean(1), 1 / np.sqrt(x.var(1) + 1e-5)
    return [_f(rng, N, C), _f(rng, C), _f(rng, C), _f(rng, N, C), x, _f(rng, C),
            mean.astype(np.float32), rstd.astype(np.float32)]


def _weight(rng: np.random.Generator, C: int, OC: int, trans_w: bool) -> np.ndarray:
    return _f(rng, OC, C) if trans_w else _f(rng, C, OC)


def _matmul_fwd(rng: np.random.Generator, N: int, C: int, OC: int, bias: bool, trans_w: bool,
                packed: bool = False) -> Args:
    w = _weight(rng, C, OC, trans_w)
    return [_f(rng, N, OC), _f(rng, N, C), PackedFloats(w, trans_w) if packed else w,
            _f(rng, OC) if bias else None, trans_w]


def _matmul_bwd(rng: np.random.Generator, N: int, C: int, OC: int, bias: bool, trans_w: bool) -> Args:
    w = _weight(rng, C, OC, trans_w)
    return [_f(rng, N, C), _f(rng, *w.shape), _f(rng, OC) if bias else None, _f(rng, N, OC),
            _f(rng, N, C), w, trans_w]


def _q_rows(w: np.ndarray, qtype: str, packed: bool) -> np.ndarray | PackedRows:
    """w (rows, K) quantized; `packed`: as each backend packs a model's weights."""
    from ..quant import quantize
    rows = quantize(w, qtype)
    return PackedRows(rows, qtype) if packed else rows


def _matmul_q_fwd(rng: np.random.Generator, N: int, K: int, OC: int, qtype: str, bias: bool,
                  packed: bool) -> Args:
    return [_f(rng, N, OC), _f(rng, N, K), _q_rows(_f(rng, OC, K), qtype, packed),
            _f(rng, OC) if bias else None, qtype]


def _matmul_q_bwd(rng: np.random.Generator, N: int, K: int, OC: int, qtype: str,
                  packed: bool) -> Args:
    return [_f(rng, N, K), _f(rng, N, OC), _q_rows(_f(rng, OC, K), qtype, packed), qtype]


def _kv(H: int, Hkv: int | None) -> tuple[int, list[int]]:
    """Heads of q, k and v together (H + 2*Hkv), and the n_kv_head argument: none for a GPT-2
    case (a backend that predates grouped-query attention still passes those)."""
    return (H + 2 * (Hkv or H)), ([] if Hkv is None else [Hkv])


def _embed_q_fwd(rng: np.random.Generator, B: int, T: int, V: int, C: int, qtype: str) -> Args:
    from ..quant import quantize
    return [_f(rng, B, T, C), _tokens(rng, V, B, T), quantize(_f(rng, V, C), qtype), qtype]


def _encoder_q_fwd(rng: np.random.Generator, B: int, T: int, V: int, C: int, pos: int,
                   qtype: str, packed: bool) -> Args:
    return [_f(rng, B, T, C), _tokens(rng, V, B, T), _q_rows(_f(rng, V, C), qtype, packed),
            _f(rng, T + pos + 2, C), qtype, pos]


def _attention_fwd(rng: np.random.Generator, B: int, T: int, H: int, D: int,
                   Hkv: int | None = None) -> Args:
    heads, kv = _kv(H, Hkv)
    return [_f(rng, B, T, H * D), np.zeros(0, np.float32), _f(rng, B, T, heads * D), H, *kv]


def _attention_saved(backend: Backend, args: Args) -> None:
    """attention_fwd: give `saved` this backend's shape (it keeps what it likes there)."""
    B, T, C3 = args[2].shape
    args[1] = backend.zeros(backend.attention_saved_shape(B, T, args[3]))


def _attention_bwd(rng: np.random.Generator, B: int, T: int, H: int, D: int,
                   Hkv: int | None = None) -> Args:
    heads, kv = _kv(H, Hkv)
    return [_f(rng, B, T, heads * D), _f(rng, B, T, H * D), _f(rng, B, T, heads * D),
            np.zeros(0, np.float32), np.zeros(0, np.float32), H, *kv]


def _attention_forward_state(backend: Backend, args: Args) -> None:
    """attention_bwd: `out` and `saved` from this backend's own attention_fwd."""
    qkv, H, kv = args[2], args[5], args[6:]
    B, T, W = qkv.shape
    args[3] = backend.zeros((B, T, W // _kv(H, kv[0] if kv else None)[0] * H))
    args[4] = backend.zeros(backend.attention_saved_shape(B, T, H))
    backend.attention_fwd(args[3], args[4], qkv, H, *kv)


def _attention_decode(rng: np.random.Generator, B: int, H: int, D: int, Tn: int, pos: int,
                      maxT: int, Hkv: int | None = None) -> Args:
    # The cache holds earlier keys/values before pos and stale data after: masking must hide it.
    heads, kv = _kv(H, Hkv)
    return [_f(rng, B, Tn, H * D), _f(rng, B, Tn, heads * D), _f(rng, B, Hkv or H, maxT, D),
            _f(rng, B, Hkv or H, maxT, D), pos, H, *kv]


def _attention_decode_batch(rng: np.random.Generator, S: int, H: int, D: int, maxT: int,
                            slots: tuple[int, ...], positions: tuple[int, ...],
                            Hkv: int | None = None) -> Args:
    # Other slots and later positions hold stale data: only each row's own slot may be read.
    B = len(slots)
    heads, kv = _kv(H, Hkv)
    return [_f(rng, B, 1, H * D), _f(rng, B, 1, heads * D), _f(rng, S, Hkv or H, maxT, D),
            _f(rng, S, Hkv or H, maxT, D), np.array(slots, np.int32),
            np.array(positions, np.int32), H, *kv]


def _decode_block(rng: np.random.Generator, B: int, Tn: int, H: int, D: int, F: int, pos: int,
                  maxT: int, qtype: str | None, act: str, packed: bool = True) -> Args:
    # Weights scaled by 1/sqrt(fan-in), as a trained model's, so the residual stream stays
    # O(1); the cache holds stale data past pos, which the block must not read.
    C = H * D

    def weight(K: int, OC: int) -> np.ndarray | PackedRows | PackedFloats:
        w = _f(rng, K, OC) / np.float32(math.sqrt(K))
        if qtype:
            return _q_rows(np.ascontiguousarray(w.T), qtype, packed)
        return PackedFloats(w) if packed else w

    params = (1 + _f(rng, C) / 4, _f(rng, C) / 4, weight(C, 3 * C), _f(rng, 3 * C) / 4,
              weight(C, C), _f(rng, C) / 4, 1 + _f(rng, C) / 4, _f(rng, C) / 4,
              weight(C, F), _f(rng, F) / 4, weight(F, C), _f(rng, C) / 4)
    return [_f(rng, B, Tn, C), _f(rng, B, Tn, C), _f(rng, B, H, maxT, D), _f(rng, B, H, maxT, D),
            np.full(decode_block_workspace(B, Tn, C, F), np.nan, np.float32), params, pos, H,
            act, qtype]


def _decode_block_batch(rng: np.random.Generator, S: int, H: int, D: int, F: int, maxT: int,
                        slots: tuple[int, ...], positions: tuple[int, ...], qtype: str | None,
                        act: str, packed: bool = True) -> Args:
    # decode_block's tensors for B = len(slots) rows of one position each, over S cache
    # slots holding stale data (only each row's own slot, up to its position, may be read)
    B = len(slots)
    out, x, _, _, work, params, _, *rest = _decode_block(rng, B, 1, H, D, F, 0, maxT, qtype,
                                                          act, packed)
    return [out, x, _f(rng, S, H, maxT, D), _f(rng, S, H, maxT, D), work, params,
            np.array(slots, np.int32), np.array(positions, np.int32), *rest]


def _llama_decode_block(rng: np.random.Generator, B: int, Tn: int, H: int, Hkv: int, D: int,
                        F: int, pos: int, maxT: int, qtype: str | None,
                        packed: bool = True) -> Args:
    # as _decode_block: weights scaled by 1/sqrt(fan-in), stale cache data past pos
    C, W = H * D, (H + 2 * Hkv) * D

    def weight(K: int, OC: int) -> np.ndarray | PackedRows | PackedFloats:
        w = _f(rng, K, OC) / np.float32(math.sqrt(K))
        if qtype:
            return _q_rows(np.ascontiguousarray(w.T), qtype, packed)
        return PackedFloats(w) if packed else w

    params = (1 + _f(rng, C) / 4, weight(C, W), weight(C, C), 1 + _f(rng, C) / 4,
              weight(C, F), weight(C, F), weight(F, C))
    return [_f(rng, B, Tn, C), _f(rng, B, Tn, C), _f(rng, B, Hkv, maxT, D),
            _f(rng, B, Hkv, maxT, D),
            np.full(llama_decode_block_workspace(B, Tn, C, F), np.nan, np.float32), params, pos,
            H, Hkv, F, 10000.0 if pos < 50 else 500000.0, 1e-5, qtype]


def _llama_decode_block_batch(rng: np.random.Generator, S: int, H: int, Hkv: int, D: int,
                              F: int, maxT: int, slots: tuple[int, ...],
                              positions: tuple[int, ...], qtype: str | None,
                              packed: bool = True) -> Args:
    # llama_decode_block's tensors for B = len(slots) rows of one position each, over S
    # grouped-query cache slots holding stale data
    B = len(slots)
    out, x, _, _, work, params, _, *rest = _llama_decode_block(rng, B, 1, H, Hkv, D, F, 0, maxT,
                                                                qtype, packed)
    return [out, x, _f(rng, S, Hkv, maxT, D), _f(rng, S, Hkv, maxT, D), work, params,
            np.array(slots, np.int32), np.array(positions, np.int32), *rest]


def _rmsnorm_fwd(rng: np.random.Generator, N: int, C: int, eps: float) -> Args:
    return [_f(rng, N, C), _f(rng, N), _f(rng, N, C) * 3, 1 + _f(rng, C) / 4, eps]


def _rmsnorm_bwd(rng: np.random.Generator, N: int, C: int, eps: float) -> Args:
    x = _f(rng, N, C) * 3
    rstd = (1.0 / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1) + eps)).astype(np.float32)
    return [_f(rng, N, C), _f(rng, C), _f(rng, N, C), x, 1 + _f(rng, C) / 4, rstd]


def _rope(rng: np.random.Generator, N: int, H: int, Hkv: int, D: int, pos0: int,
          theta: float) -> Args:
    # rows at scattered positions from pos0 (a KV-cache step's offset, up to near max_seq_len)
    positions = (pos0 + rng.permutation(N)).astype(np.int32)
    return [_f(rng, N, (H + 2 * Hkv) * D), positions, H, Hkv, theta]


def _swiglu_fwd(rng: np.random.Generator, N: int, F: int) -> Args:
    # gate spans +-40: exp(-gate) overflows float32 for the most negative ones
    return [_f(rng, N, F), _f(rng, N, F) * 10, _f(rng, N, F)]


def _swiglu_bwd(rng: np.random.Generator, N: int, F: int) -> Args:
    return [_f(rng, N, F), _f(rng, N, F), _f(rng, N, F), _f(rng, N, F) * 10, _f(rng, N, F)]


def _unary(rng: np.random.Generator, n: int) -> Args:
    return [_f(rng, n), _f(rng, n) * 4]


def _unary_bwd(rng: np.random.Generator, n: int) -> Args:
    return [_f(rng, n), _f(rng, n), _f(rng, n) * 4]


def _residual(rng: np.random.Generator, n: int) -> Args:
    return [_f(rng, n), _f(rng, n), _f(rng, n)]


def _dropout(rng: np.random.Generator, n: int, p: float, seed: int) -> Args:
    return [_f(rng, n), _f(rng, n), p, seed]


def _softmax_xent(rng: np.random.Generator, N: int, V: int, with_grad: bool) -> Args:
    targets = rng.integers(0, V, N).astype(np.int32)
    if N > 1:
        targets[0] = -1
    return [_f(rng, N), _f(rng, N, V) if with_grad else None, _f(rng, N, V) * 5, targets, 1.0 / N]


def _sgd(rng: np.random.Generator, n: int, momentum: float) -> Args:
    return [_f(rng, n), _f(rng, n), _f(rng, n) if momentum else None, 0.1, momentum, 0.01,
            n // 2 + 16]


def _adam(rng: np.random.Generator, n: int, decoupled: bool, step: int) -> Args:
    return [_f(rng, n), _f(rng, n), _f(rng, n), np.abs(_f(rng, n)), 1e-2, 0.9, 0.99, 1e-8, 0.1,
            step, n // 2 + 16, decoupled]


def _norm(rng: np.random.Generator, n: int) -> Args:
    return [_f(rng, n) * 3]


def _grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """Every combination of the given axes, as shape dicts (the last axis varies fastest)."""
    shapes: list[dict[str, Any]] = [{}]
    for name, values in axes.items():
        shapes = [{**s, name: v} for s in shapes for v in values]
    return shapes


def _shapes(names: str, *rows: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [dict(zip(names.split(), row, strict=True)) for row in rows]


# the last of each: above 32K floats, where cpp splits rows into fixed tasks (a partial
# last task, a partial last column block)
_ENC = _shapes("B T V C pos", (1, 1, 3, 5, 0), (2, 5, 13, 17, 3), (3, 9, 70, 33, 0),
               (4, 70, 90, 130, 1))
_LN = _shapes("N C", (1, 5), (7, 17), (37, 33), (64, 128), (300, 130))
# (5, 3, 41): just past the few-row (GEMV) path, tiny K (the unpacked small-K tiles);
# (300, 40, 70) and (300, 70, 40): dW's product over two depth blocks, computed in both
# orientations (cpp packs the narrower of inp and dout and may add the product transposed)
# (16, 1000, 60) and (16, 4500, 9): few rows, as a batched decode step (cpp reads a weight
# of up to 64K floats in place), K past one packing block, a ragged last column panel;
# 4500 deep: past what cpp's in-place path copies
_MM = [{**s, **o} for s in _shapes("N C OC", (1, 5, 3), (5, 3, 41), (7, 17, 19), (37, 33, 70),
                                   (130, 128, 384), (20, 64, 5003), (13, 300, 33),
                                   (300, 40, 70), (300, 70, 40), (16, 1000, 60), (16, 4500, 9))
       for o in _grid(bias=(True, False), trans_w=(False, True))]
# the same weights as Backend.pack_weight holds them: one row (cpp's GEMV reads the panels,
# or a transposed weight itself), 5..65 rows (cpp's panels: tiles of 6 and 8 rows, a ragged last panel, depth past
# one block) and 130 rows
_MMP = [{**s, "bias": True, "trans_w": t, "packed": True}
        for s in _shapes("N C OC", (1, 5, 3), (5, 3, 41), (16, 300, 70), (9, 1000, 60),
                         (65, 17, 33), (130, 128, 384))
        for t in (False, True)]
# K not a multiple of 32 (zero-padded blocks), one row (GEMV), wide heads, many rows
# ggml's rows and the backend's packed rows (cpp: groups of 8 or 16 rows; OC of 1, 17 and
# 5003 leave a partial group, 37 rows take the GEMM path through unpacked rows; 9, 16 and
# 17 rows end the packed kernels' row tiles part way)
_MMQ = [{**s, "qtype": q, "bias": i % 2 == 0, "packed": packed}
        for i, s in enumerate(_shapes("N K OC", (1, 32, 1), (1, 45, 7), (3, 96, 33), (7, 17, 19),
                                      (1, 384, 1152), (37, 1536, 70), (5, 64, 5003),
                                      (2, 256, 17), (9, 128, 16), (16, 64, 19), (17, 45, 33)))
        for q in ("q8_0", "q4_0", "q4_1") for packed in (False, True)]
# matmul_q_bwd: K % 32 != 0 (a partial last block), OC odd (a partial packed group), N 1 and
# odd; OC 5003 sums many rows per element; (3, 1100, 1001) spans two column slices of
# DEQUANT_CHUNK_FLOATS (the last one partial, ending mid-block); ggml's and packed rows.
# Tolerance: matmul_fwd's (float32 accumulation of the exactly dequantized weights).
_MMQB = [{**s, "qtype": q, "packed": packed}
         for s in _shapes("N K OC", (1, 32, 1), (1, 45, 7), (3, 96, 33), (7, 17, 19),
                          (5, 64, 5003), (37, 200, 70), (33, 1100, 1001), (2, 256, 17))
         for q in ("q8_0", "q4_0", "q4_1") for packed in (False, True)]
# one row, a partial block (C 45), repeated tokens, a vocabulary of 5003
_EMBQ = _shapes("B T V C qtype", (1, 1, 3, 32, "q8_0"), (2, 3, 7, 45, "q4_0"),
                (3, 5, 5003, 96, "q4_1"), (1, 2, 9, 17, "q8_0"))
# every type, ggml's rows and packed: one row at a late position (a decode step), a partial
# block (C 45, 17), repeated tokens, a vocabulary of 5003
_ENCQ = [{**s, "qtype": q, "packed": packed}
         for s in _shapes("B T V C pos", (1, 1, 3, 32, 5), (2, 3, 7, 45, 0), (3, 5, 5003, 96, 2),
                          (1, 2, 9, 17, 1))
         for q in ("q8_0", "q4_0", "q4_1") for packed in (False, True)]
_ATT = _shapes("B T H D", (1, 1, 1, 8), (2, 7, 3, 5), (2, 33, 2, 16), (1, 64, 4, 32))
# grouped-query: multi-query (Hkv 1), groups of 2 and 3, Hkv = H given explicitly; head dims
# 2, 6 and 66, odd T
_ATT += _shapes("B T H D Hkv", (1, 1, 2, 2, 1), (2, 7, 4, 6, 1), (2, 9, 6, 6, 2),
                (1, 33, 6, 66, 3), (2, 5, 3, 2, 3))
# Tn = 1, 2: rows read the cache in place (cpp); Tn = 3, 6: through the GEMM tiles
_DEC = _shapes("B H D Tn pos maxT", (1, 1, 8, 1, 0, 12), (2, 3, 5, 6, 0, 12),
               (2, 3, 5, 1, 6, 12), (1, 2, 16, 1, 11, 12), (1, 4, 32, 1, 40, 64),
               (1, 2, 7, 2, 5, 12), (2, 1, 9, 3, 4, 12))
# grouped-query: the cache holds Hkv heads; the last positions of the cache (pos + Tn = maxT)
_DEC += _shapes("B H D Tn pos maxT Hkv", (1, 4, 6, 1, 63, 64, 1), (2, 4, 2, 3, 9, 12, 2),
                (1, 6, 66, 1, 10, 11, 3), (2, 3, 6, 2, 0, 12, 3), (1, 4, 8, 6, 0, 6, 1))
_DECB = _shapes("S H D maxT slots positions", (1, 1, 8, 4, (0,), (0,)),
                (3, 1, 5, 12, (2, 0), (5, 0)), (5, 3, 5, 9, (4, 1, 3), (8, 0, 3)),
                (4, 4, 32, 70, (3, 0, 2, 1), (69, 31, 32, 1)))
_DECB += _shapes("S H D maxT slots positions Hkv", (2, 4, 6, 12, (1,), (11,), 1),
                 (5, 6, 66, 9, (4, 1, 3), (8, 0, 3), 2), (4, 4, 2, 70, (3, 0, 2, 1),
                                                          (69, 31, 32, 1), 4))
# C not a multiple of 8 or 16, one and three heads, Tn = 1 and a prefill of several rows,
# pos 0 and later, out aliasing x, each weight type; the last rows are small-model sized.
_DBLK = _shapes("B Tn H D F pos maxT qtype act",
                (1, 1, 3, 5, 23, 4, 9, None, "gelu"), (2, 4, 1, 7, 17, 0, 6, None, "relu"),
                (1, 1, 4, 32, 512, 40, 64, None, "gelu"),
                (1, 1, 3, 15, 70, 6, 8, "q8_0", "gelu"), (2, 2, 2, 16, 96, 3, 7, "q4_0", "relu"),
                (1, 5, 3, 15, 40, 2, 9, "q4_1", "gelu"), (1, 1, 4, 32, 512, 40, 64, "q8_0", "relu"))
_DBLK += [{**_DBLK[0], "in_place": True}, {**_DBLK[4], "in_place": True},
          {**_DBLK[3], "packed": False}, {**_DBLK[5], "packed": False},
          {**_DBLK[1], "packed": False}]
# sequences at their own lengths in some of the cache's slots, C not a multiple of 8, each
# weight type; the last row is a 16-sequence step of small-model's shape
_DBB = _shapes("S H D F maxT slots positions qtype act",
               (1, 1, 8, 16, 4, (0,), (0,), None, "gelu"),
               (5, 3, 5, 23, 9, (4, 1, 3), (8, 0, 3), None, "relu"),
               (3, 2, 16, 96, 7, (2, 0), (6, 1), "q8_0", "gelu"),
               (4, 3, 15, 40, 9, (3, 0, 2), (2, 8, 0), "q4_0", "relu"),
               (2, 1, 32, 64, 5, (1, 0), (4, 0), "q4_1", "gelu"),
               (16, 4, 32, 512, 40, tuple(range(15, -1, -1)), tuple((7 * i) % 40 for i in range(16)),
                None, "gelu"))
_DBB += [{**_DBB[1], "in_place": True}, {**_DBB[3], "packed": False},
         {**_DBB[1], "packed": False}, {**_DBB[5], "packed": False}]
# grouped, multi-query and Hkv = H; head dims odd and even; C and F not multiples of 32 or
# 8; each weight type, packed and as ggml's rows; the last of the first row a seed model's
_LDB = _shapes("B Tn H Hkv D F pos maxT qtype",
               (1, 1, 4, 2, 6, 23, 4, 9, None), (2, 3, 3, 1, 10, 17, 0, 6, None),
               (1, 1, 1, 1, 32, 104, 40, 64, None), (1, 1, 3, 3, 10, 70, 6, 8, "q8_0"),
               (2, 2, 2, 1, 16, 96, 3, 7, "q4_0"), (1, 5, 6, 2, 8, 40, 2, 9, "q4_1"),
               (1, 1, 1, 1, 32, 104, 60, 64, "q8_0"))
_LDB += [{**_LDB[0], "in_place": True}, {**_LDB[4], "in_place": True},
         {**_LDB[3], "packed": False}, {**_LDB[5], "packed": False},
         {**_LDB[1], "packed": False}]
# sequences at their own lengths in some slots; multi-query, grouped and Hkv = H; each weight
# type; the last row a 16-sequence step of llama-small-model's shape
_LDBB = _shapes("S H Hkv D F maxT slots positions qtype",
                (1, 1, 1, 8, 16, 4, (0,), (0,), None),
                (5, 3, 1, 6, 23, 9, (4, 1, 3), (8, 0, 3), None),
                (3, 4, 2, 16, 96, 7, (2, 0), (6, 1), "q8_0"),
                (4, 6, 3, 16, 40, 9, (3, 0, 2), (2, 8, 0), "q4_0"),
                (2, 2, 1, 32, 64, 5, (1, 0), (4, 0), "q4_1"),
                (16, 4, 4, 32, 368, 40, tuple(range(15, -1, -1)),
                 tuple((7 * i) % 40 for i in range(16)), None))
_LDBB += [{**_LDBB[1], "in_place": True}, {**_LDBB[3], "packed": False},
          {**_LDBB[1], "packed": False}]
_N = _shapes("n", (1,), (15,), (1001,), (40003,))
_RMS = _shapes("N C eps", (1, 5, 1e-5), (7, 17, 1e-6), (37, 33, 1e-5), (64, 128, 1e-5),
               (300, 130, 1e-6))
# head dims 2, 6, 66; multi-query, grouped and Hkv = H; positions from 0 and near a
# max_seq_len of 2048 (float32 angles there lose digits: the table must be float64-made);
# rope_theta of llama 2 and llama 3
_ROPE = _shapes("N H Hkv D pos0 theta", (1, 1, 1, 2, 0, 10000.0), (5, 3, 1, 6, 0, 10000.0),
                (7, 4, 4, 66, 3, 10000.0), (9, 6, 2, 8, 2040, 10000.0),
                (33, 2, 1, 66, 1990, 500000.0), (3, 5, 5, 6, 255, 10000.0))
_SWIGLU = _shapes("N F", (1, 1), (7, 15), (33, 1001), (20, 2051))
_IN_PLACE = [{"n": 1001, "in_place": True}]
_DROP = _shapes("n p seed", (1, 0.5, 0), (1000, 0.1, 7), (4099, 0.5, 2 ** 32 - 1))
_XENT = [{**s, "with_grad": g} for s in _shapes("N V", (1, 3), (7, 5003), (33, 65))
         for g in (True, False)] + [{"N": 5, "V": 70, "with_grad": True, "in_place": True}]
# One entry per kernel of the contract; every name in KERNELS must have one. A shape with
# in_place=True runs the kernel with the spec's aliases (an output sharing an input's array).
CASES: dict[str, KernelCases] = {
    "encoder_fwd": KernelCases(_ENC, _encoder_fwd, (0,)),
    "encoder_bwd": KernelCases(_ENC, _encoder_bwd, (0, 1)),
    "layernorm_fwd": KernelCases(_LN, _layernorm_fwd, (0, 1, 2)),
    "layernorm_bwd": KernelCases(_LN, _layernorm_bwd, (0, 1, 2)),
    "matmul_fwd": KernelCases(_MM + _MMP, _matmul_fwd, (0,)),
    "matmul_bwd": KernelCases(_MM, _matmul_bwd, (0, 1, 2)),
    "matmul_q_fwd": KernelCases(_MMQ, _matmul_q_fwd, (0,)),
    "embed_q_fwd": KernelCases(_EMBQ, _embed_q_fwd, (0,)),
    # a dequantization and a float32 add: exactly the composed path's sums
    "encoder_q_fwd": KernelCases(_ENCQ, _encoder_q_fwd, (0,), rtol=0.0, atol=0.0),
    "matmul_q_bwd": KernelCases(_MMQB, _matmul_q_bwd, (0,)),
    "attention_fwd": KernelCases(_ATT, _attention_fwd, (0,), setup=_attention_saved),
    "attention_bwd": KernelCases(_ATT, _attention_bwd, (0,), setup=_attention_forward_state),
    "attention_decode": KernelCases(_DEC, _attention_decode, (0, 2, 3)),
    "attention_decode_batch": KernelCases(_DECB, _attention_decode_batch, (0, 2, 3)),
    "decode_block": KernelCases(_DBLK, _decode_block, (0, 2, 3), aliases=((1, 0),)),
    "decode_block_batch": KernelCases(_DBB, _decode_block_batch, (0, 2, 3), aliases=((1, 0),)),
    # rope's angles are the backend's own (rope_fwd's rtol); a quantized block rounds its
    # activations to q8_0 after them and after SwiGLU's exp, so a value that crosses a
    # rounding boundary moves its block by a step (~1/127 of it), as in tests/test_node_parity
    "llama_decode_block": KernelCases(_LDB, _llama_decode_block, (0, 2, 3), rtol=3e-3,
                                      atol=3e-3, aliases=((1, 0),)),
    "llama_decode_block_batch": KernelCases(_LDBB, _llama_decode_block_batch, (0, 2, 3),
                                            rtol=3e-3, atol=3e-3, aliases=((1, 0),)),
    "rmsnorm_fwd": KernelCases(_RMS, _rmsnorm_fwd, (0, 1)),
    "rmsnorm_bwd": KernelCases(_RMS, _rmsnorm_bwd, (0, 1)),
    "rope_fwd": KernelCases(_ROPE, _rope, (0,), rtol=1e-5),
    "rope_bwd": KernelCases(_ROPE, _rope, (0,), rtol=1e-5),
    "swiglu_fwd": KernelCases(_SWIGLU, _swiglu_fwd, (0,)),
    "swiglu_bwd": KernelCases(_SWIGLU, _swiglu_bwd, (0, 1)),
    "gelu_fwd": KernelCases(_N, _unary, (0,)),
    "gelu_bwd": KernelCases(_N + _IN_PLACE, _unary_bwd, (0,), aliases=((1, 0),)),
    "relu_fwd": KernelCases(_N, _unary, (0,)),
    "relu_bwd": KernelCases(_N + _IN_PLACE, _unary_bwd, (0,), aliases=((1, 0),)),
    "residual_fwd": KernelCases(_N + _shapes("n", (3 * 37,)), _residual, (0,)),
    "dropout_fwd": KernelCases(_DROP + [{**_DROP[1], "in_place": True}], _dropout, (0,),
                               rtol=1e-6, atol=0.0, aliases=((1, 0),)),
    "dropout_bwd": KernelCases(_DROP + [{**_DROP[1], "in_place": True}], _dropout, (0,),
                               rtol=1e-6, atol=0.0, aliases=((1, 0),)),
    "softmax_xent": KernelCases(_XENT, _softmax_xent, (0, 1), aliases=((2, 1),)),
    # n = 40003: the threaded path, the weight-decay boundary inside a task
    "sgd_update": KernelCases(_grid(n=(1003, 40003), momentum=(0.0, 0.9)), _sgd, (0, 2)),
    "adam_update": KernelCases(_grid(n=(1003, 40003), decoupled=(False, True), step=(1, 3)),
                               _adam, (0, 2, 3)),
    # tails of every SIMD width, several fixed-size blocks, the threaded path
    "grad_norm_sq": KernelCases(_shapes("n", (1,), (7,), (1003,), (32768 * 3 + 5,),
                                        ((1 << 17) + 9,)), _norm, (), rtol=1e-12,
                                returns=True),
}


# ---- the whole model and generation ----------------------------------------------------------
MODEL_CASES: list[dict[str, Any]] = [
    {"tie": False, "act": "gelu"}, {"tie": True, "act": "relu"},
    # llama: multi-query and tied; grouped (3 query heads per KV head) and untied
    {"tie": True, "act": "gelu", "arch": "llama", "kv": 1},
    {"tie": False, "act": "gelu", "arch": "llama", "kv": 2}]


def _work(shape: dict[str, Any]) -> float:
    """A rough size of a case, to pick the largest one for timing."""
    sizes = [max(v, 1) for k, v in shape.items() if isinstance(v, int)
             and not isinstance(v, bool) and k not in ("seed", "step")]
    return float(np.prod(sizes))
