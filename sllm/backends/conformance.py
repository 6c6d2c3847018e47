"""The conformance suite: every kernel of a backend against the numpy reference.

Modelled on ggml's test-backend-ops. Each kernel of the contract has an entry in `CASES`:
the awkward shapes to try (sizes that are not multiples of a SIMD width, T = 1, one head,
a large vocabulary) and a builder of its arguments. The checker runs the kernel on the
backend and on the reference with the same arguments and compares every output element:

    |mine - ref| <= atol * scale + rtol * |ref|,   scale = max(1, max |ref|)

Beyond single kernels it checks the whole model (logits, loss, every gradient, with
dropout on) and generation (KV-cache decode logits, greedy ids) against the numpy backend.
`sllm check-backend NAME [-k KERNEL] [--perf]` prints the report and exits non-zero on any
failure; `--perf` also times each kernel against the reference.

Adding a kernel to the contract: add one `KernelCases` entry to `CASES` (a test fails
until every name in KERNELS has one).
"""
from __future__ import annotations

import functools
import inspect
import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..timing import timed
from .base import KERNELS, LLAMA_KERNELS, OPTIONAL_KERNELS, Backend, decode_block_workspace

RTOL, ATOL = 1e-4, 1e-5
Args = list[Any]


@dataclass(frozen=True)
class KernelCases:
    """How to check one kernel: the shapes to try and how to build its arguments.

    `args(rng, **shape)` returns the argument list for the reference (numpy arrays and
    scalars); `outputs` are the indices of the arguments to compare afterwards. `aliases`
    lists (i, j) pairs applied to shapes marked in_place=True: argument j becomes the same
    array as argument i. `model_shapes(cfg, B, T)` gives the (label, shape) pairs a model
    uses, which `sllm bench` times.
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
    model_shapes: Callable[[Any, int, int], list[tuple[str, dict[str, Any]]]] | None = None

    def bench_shapes(self, cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
        """(label, shape) pairs a model of config cfg uses at batch B, length T (for `sllm
        bench`); without model_shapes, the largest conformance case."""
        if self.model_shapes is not None:
            return self.model_shapes(cfg, B, T)
        shape = max(self.shapes, key=_work)
        shape = {k: v for k, v in shape.items() if k != "in_place"}
        return [(case_label(shape), shape)]


@dataclass(frozen=True)
class Check:
    """One output of one case compared with the reference."""

    kernel: str
    case: str
    output: str
    error: float     # |mine - ref| at the element that used most of its tolerance
    allowed: float   # the tolerance at that element
    passed: bool


@dataclass
class Report:
    """Every check of a run, and the timings when --perf was asked for."""

    backend: str
    checks: list[Check] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # llama cases of a GPT-2-only backend

    @property
    def passed(self) -> bool:
        """True when every check passed (and at least one ran)."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.passed]


def compare(kernel: str, case: str, output: str, mine: Any, ref: Any, rtol: float = RTOL,
            atol: float = ATOL, scale: float | None = None) -> Check:
    """Compare arrays elementwise: |mine - ref| <= atol * scale + rtol * |ref|."""
    mine = np.atleast_1d(np.asarray(mine, dtype=np.float64))
    ref = np.atleast_1d(np.asarray(ref, dtype=np.float64))
    if mine.shape != ref.shape:
        return Check(kernel, case, f"{output} shape {mine.shape} != {ref.shape}",
                     math.inf, 0.0, False)
    if ref.size == 0:
        return Check(kernel, case, output, 0.0, 0.0, True)
    if scale is None:
        scale = max(1.0, float(np.nanmax(np.abs(ref))))
    diff = np.abs(mine - ref)
    diff[np.isnan(mine) != np.isnan(ref)] = math.inf
    diff[np.isnan(mine) & np.isnan(ref)] = 0.0
    allowed = atol * scale + rtol * np.nan_to_num(np.abs(ref))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / allowed)
    worst = int(np.argmax(ratio))
    return Check(kernel, case, output, float(diff.flat[worst]), float(allowed.flat[worst]),
                 bool(ratio.flat[worst] <= 1.0))


# ---- running one kernel on a backend and on the reference ----------------------------------
def _reference_backend() -> Backend:
    from .numpy_ref import NumpyBackend
    return NumpyBackend()


def on_backend(backend: Backend, args: Args, spec: KernelCases,
               in_place: bool = False) -> Args:
    """Copies of args owned by `backend`, with the spec's aliases and setup applied."""
    out = [_own(backend, a) for a in args]
    for i, j in spec.aliases if in_place else ():
        out[j] = out[i]
    if spec.setup is not None:
        spec.setup(backend, out)
    return out


@dataclass(frozen=True)
class PackedRows:
    """Quantized rows a case gives each backend as that backend stores a model's weights
    (Backend.pack_q of its own copy): the reference gets ggml's rows, cpp its packed form."""

    rows: np.ndarray
    qtype: str


def _own(backend: Backend, arg: Any) -> Any:
    """A backend-owned copy of an array argument (each array of a tuple: decode_block's
    params; quantized rows packed as the backend packs them); anything else as it is."""
    if isinstance(arg, np.ndarray):
        return backend.from_numpy(arg, arg.dtype)
    if isinstance(arg, PackedRows):
        return backend.pack_q(backend.from_numpy(arg.rows, np.uint8), arg.qtype)
    if isinstance(arg, tuple):
        return tuple(_own(backend, a) for a in arg)
    return arg


def output_names(kernel: str) -> list[str]:
    """The parameter names of a kernel, from its declaration in base.Backend."""
    return list(inspect.signature(getattr(Backend, kernel)).parameters)[1:]


def case_label(shape: dict[str, Any]) -> str:
    """A short label for a shape: "N=7 C=17"."""
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _rng(kernel: str, index: int) -> np.random.Generator:
    """A generator seeded by the case, so every run (and every backend) sees the same data."""
    return np.random.default_rng(zlib.crc32(f"{kernel}:{index}".encode()))


def check_kernel(backend: Backend, kernel: str, index: int) -> list[Check]:
    """Run case `index` of `kernel` on the backend and on the reference; compare outputs."""
    spec = CASES[kernel]
    shape = dict(spec.shapes[index])
    in_place = bool(shape.pop("in_place", False))
    args = spec.args(_rng(kernel, index), **shape)
    reference = _reference_backend()
    ref, mine = on_backend(reference, args, spec, in_place), on_backend(backend, args, spec, in_place)
    ref_value = getattr(reference, kernel)(*ref)
    value = getattr(backend, kernel)(*mine)
    names = output_names(kernel)
    label = case_label(spec.shapes[index])
    checks = [compare(kernel, label, names[i], mine[i], ref[i], spec.rtol, spec.atol)
              for i in spec.outputs if ref[i] is not None]
    if spec.returns:
        checks.append(compare(kernel, label, "returned value", value, ref_value, spec.rtol,
                              0.0))
    return checks


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


def _matmul_fwd(rng: np.random.Generator, N: int, C: int, OC: int, bias: bool, trans_w: bool) -> Args:
    return [_f(rng, N, OC), _f(rng, N, C), _weight(rng, C, OC, trans_w),
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


def _kv(H: int, Hkv: int | None) -> tuple[int, list[int]]:
    """Heads of q, k and v together (H + 2*Hkv), and the n_kv_head argument: none for a GPT-2
    case (a backend that predates grouped-query attention still passes those)."""
    return (H + 2 * (Hkv or H)), ([] if Hkv is None else [Hkv])


def _embed_q_fwd(rng: np.random.Generator, B: int, T: int, V: int, C: int, qtype: str) -> Args:
    from ..quant import quantize
    return [_f(rng, B, T, C), _tokens(rng, V, B, T), quantize(_f(rng, V, C), qtype), qtype]


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

    def weight(K: int, OC: int) -> np.ndarray | PackedRows:
        w = _f(rng, K, OC) / np.float32(math.sqrt(K))
        return _q_rows(np.ascontiguousarray(w.T), qtype, packed) if qtype else w

    params = (1 + _f(rng, C) / 4, _f(rng, C) / 4, weight(C, 3 * C), _f(rng, 3 * C) / 4,
              weight(C, C), _f(rng, C) / 4, 1 + _f(rng, C) / 4, _f(rng, C) / 4,
              weight(C, F), _f(rng, F) / 4, weight(F, C), _f(rng, C) / 4)
    return [_f(rng, B, Tn, C), _f(rng, B, Tn, C), _f(rng, B, H, maxT, D), _f(rng, B, H, maxT, D),
            np.full(decode_block_workspace(B, Tn, C, F), np.nan, np.float32), params, pos, H,
            act, qtype]


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
_MM = [{**s, **o} for s in _shapes("N C OC", (1, 5, 3), (5, 3, 41), (7, 17, 19), (37, 33, 70),
                                   (130, 128, 384), (20, 64, 5003), (13, 300, 33),
                                   (300, 40, 70), (300, 70, 40))
       for o in _grid(bias=(True, False), trans_w=(False, True))]
# K not a multiple of 32 (zero-padded blocks), one row (GEMV), wide heads, many rows
# ggml's rows and the backend's packed rows (cpp: groups of 8 or 16 rows; OC of 1, 17 and
# 5003 leave a partial group, 37 rows take the GEMM path through unpacked rows)
_MMQ = [{**s, "qtype": q, "bias": i % 2 == 0, "packed": packed}
        for i, s in enumerate(_shapes("N K OC", (1, 32, 1), (1, 45, 7), (3, 96, 33), (7, 17, 19),
                                      (1, 384, 1152), (37, 1536, 70), (5, 64, 5003),
                                      (2, 256, 17)))
        for q in ("q8_0", "q4_0", "q4_1") for packed in (False, True)]
# one row, a partial block (C 45), repeated tokens, a vocabulary of 5003
_EMBQ = _shapes("B T V C qtype", (1, 1, 3, 32, "q8_0"), (2, 3, 7, 45, "q4_0"),
                (3, 5, 5003, 96, "q4_1"), (1, 2, 9, 17, "q8_0"))
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
          {**_DBLK[3], "packed": False}, {**_DBLK[5], "packed": False}]
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

# ---- the shapes a model uses (what `sllm bench` times) --------------------------------------
def _sizes(cfg: Any, B: int, T: int) -> tuple[int, int, int, int, int]:
    """N = B*T rows, C, F, V, H of a model config."""
    return B * T, cfg.embedding_dim, cfg.ffn_hidden_dim, cfg.vocab_size, cfg.num_heads


def _enc_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    return [(f"B{B} T{T}", dict(B=B, T=T, V=cfg.vocab_size, C=cfg.embedding_dim, pos=0))]


def _ln_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    N, C, *_ = _sizes(cfg, B, T)
    return [(f"{N}x{C}", dict(N=N, C=C))]


def _gemms(cfg: Any, B: int, T: int) -> list[tuple[str, int, int, int]]:
    N, C, F, V, _ = _sizes(cfg, B, T)
    return [("qkv", N, C, 3 * C), ("fc", N, C, F), ("fc_proj", N, F, C), ("lm_head", N, C, V)]


def _mm_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{label} {N}x{K}x{M}", dict(N=N, C=K, OC=M, bias=True, trans_w=False))
            for label, N, K, M in _gemms(cfg, B, T)]


def _mmq_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    # a training-batch GEMM, and the GEMV of one decoded token through the output layer
    N, C, F, V, _ = _sizes(cfg, B, T)
    return [(f"q8_0 {label} {n}x{K}x{M}", dict(N=n, K=K, OC=M, qtype="q8_0", bias=True,
                                                packed=True))
            for label, n, K, M in (("fc", N, C, F), ("lm_head decode", 1, C, V))]


def _att_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    H = cfg.num_heads
    return [(f"B{B} T{T} H{H}", dict(B=B, T=T, H=H, D=cfg.embedding_dim // H))]


def _dec_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    H = cfg.num_heads
    return [(f"B1 pos{T - 1} H{H}", dict(B=1, H=H, D=cfg.embedding_dim // H, Tn=1, pos=T - 1,
                                          maxT=T))]


def _decb_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    H = cfg.num_heads
    positions = tuple((T - 1 - 7 * i) % T for i in range(B))  # sequences at mixed lengths
    return [(f"{B} sequences maxT{T} H{H}", dict(S=B, H=H, D=cfg.embedding_dim // H, maxT=T,
                                                  slots=tuple(range(B)), positions=positions))]


def _dblk_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    H, act = cfg.num_heads, cfg.activation
    return [(f"B1 pos{T - 1} H{H} {act}", dict(B=1, Tn=1, H=H, D=cfg.embedding_dim // H,
                                               F=cfg.ffn_hidden_dim, pos=T - 1, maxT=T,
                                               qtype=None, act=act))]


def _rms_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    N, C, *_ = _sizes(cfg, B, T)
    return [(f"{N}x{C}", dict(N=N, C=C, eps=getattr(cfg, "norm_eps", 1e-5)))]


def _rope_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    H, Hkv = cfg.num_heads, getattr(cfg, "kv_heads", cfg.num_heads)
    return [(f"{B * T} rows H{H} Hkv{Hkv}", dict(N=B * T, H=H, Hkv=Hkv, D=cfg.head_dim, pos0=0,
                                                 theta=getattr(cfg, "rope_theta", 10000.0)))]


def _swiglu_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    N, _, F, *_ = _sizes(cfg, B, T)
    return [(f"{N}x{F}", dict(N=N, F=F))]


def _ffn_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    N, _, F, *_ = _sizes(cfg, B, T)
    return [(f"{N}x{F}", dict(n=N * F))]


def _res_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    N, C, *_ = _sizes(cfg, B, T)
    return [(f"{N}x{C}", dict(n=N * C))]


def _drop_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    N, C, *_ = _sizes(cfg, B, T)
    p = cfg.dropout or 0.1
    return [(f"{N}x{C} p={p:g}", dict(n=N * C, p=p, seed=1))]


def _xent_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    N, _, _, V, _ = _sizes(cfg, B, T)
    return [(f"{N}x{V}", dict(N=N, V=V, with_grad=True))]


def _sgd_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    n = cfg.num_parameters()
    return [(f"{n} params momentum", dict(n=n, momentum=0.9))]


def _adam_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    n = cfg.num_parameters()
    return [(f"{n} params AdamW", dict(n=n, decoupled=True, step=3))]


def _norm_m(cfg: Any, B: int, T: int) -> list[tuple[str, dict[str, Any]]]:
    n = cfg.num_parameters()
    return [(f"{n} params", dict(n=n))]


# One entry per kernel of the contract; every name in KERNELS must have one. A shape with
# in_place=True runs the kernel with the spec's aliases (an output sharing an input's array).
CASES: dict[str, KernelCases] = {
    "encoder_fwd": KernelCases(_ENC, _encoder_fwd, (0,), model_shapes=_enc_m),
    "encoder_bwd": KernelCases(_ENC, _encoder_bwd, (0, 1), model_shapes=_enc_m),
    "layernorm_fwd": KernelCases(_LN, _layernorm_fwd, (0, 1, 2), model_shapes=_ln_m),
    "layernorm_bwd": KernelCases(_LN, _layernorm_bwd, (0, 1, 2), model_shapes=_ln_m),
    "matmul_fwd": KernelCases(_MM, _matmul_fwd, (0,), model_shapes=_mm_m),
    "matmul_bwd": KernelCases(_MM, _matmul_bwd, (0, 1, 2), model_shapes=_mm_m),
    "matmul_q_fwd": KernelCases(_MMQ, _matmul_q_fwd, (0,), model_shapes=_mmq_m),
    "embed_q_fwd": KernelCases(_EMBQ, _embed_q_fwd, (0,)),
    "attention_fwd": KernelCases(_ATT, _attention_fwd, (0,), setup=_attention_saved,
                               model_shapes=_att_m),
    "attention_bwd": KernelCases(_ATT, _attention_bwd, (0,), setup=_attention_forward_state,
                               model_shapes=_att_m),
    "attention_decode": KernelCases(_DEC, _attention_decode, (0, 2, 3), model_shapes=_dec_m),
    "attention_decode_batch": KernelCases(_DECB, _attention_decode_batch, (0, 2, 3),
                                          model_shapes=_decb_m),
    "decode_block": KernelCases(_DBLK, _decode_block, (0, 2, 3), aliases=((1, 0),),
                                model_shapes=_dblk_m),
    "rmsnorm_fwd": KernelCases(_RMS, _rmsnorm_fwd, (0, 1), model_shapes=_rms_m),
    "rmsnorm_bwd": KernelCases(_RMS, _rmsnorm_bwd, (0, 1), model_shapes=_rms_m),
    "rope_fwd": KernelCases(_ROPE, _rope, (0,), rtol=1e-5, model_shapes=_rope_m),
    "rope_bwd": KernelCases(_ROPE, _rope, (0,), rtol=1e-5, model_shapes=_rope_m),
    "swiglu_fwd": KernelCases(_SWIGLU, _swiglu_fwd, (0,), model_shapes=_swiglu_m),
    "swiglu_bwd": KernelCases(_SWIGLU, _swiglu_bwd, (0, 1), model_shapes=_swiglu_m),
    "gelu_fwd": KernelCases(_N, _unary, (0,), model_shapes=_ffn_m),
    "gelu_bwd": KernelCases(_N + _IN_PLACE, _unary_bwd, (0,), aliases=((1, 0),),
                          model_shapes=_ffn_m),
    "relu_fwd": KernelCases(_N, _unary, (0,), model_shapes=_ffn_m),
    "relu_bwd": KernelCases(_N + _IN_PLACE, _unary_bwd, (0,), aliases=((1, 0),),
                          model_shapes=_ffn_m),
    "residual_fwd": KernelCases(_N + _shapes("n", (3 * 37,)), _residual, (0,),
                                model_shapes=_res_m),
    "dropout_fwd": KernelCases(_DROP + [{**_DROP[1], "in_place": True}], _dropout, (0,),
                               rtol=1e-6, atol=0.0, aliases=((1, 0),), model_shapes=_drop_m),
    "dropout_bwd": KernelCases(_DROP + [{**_DROP[1], "in_place": True}], _dropout, (0,),
                               rtol=1e-6, atol=0.0, aliases=((1, 0),), model_shapes=_drop_m),
    "softmax_xent": KernelCases(_XENT, _softmax_xent, (0, 1), aliases=((2, 1),),
                              model_shapes=_xent_m),
    # n = 40003: the threaded path, the weight-decay boundary inside a task
    "sgd_update": KernelCases(_grid(n=(1003, 40003), momentum=(0.0, 0.9)), _sgd, (0, 2),
                            model_shapes=_sgd_m),
    "adam_update": KernelCases(_grid(n=(1003, 40003), decoupled=(False, True), step=(1, 3)),
                               _adam, (0, 2, 3), model_shapes=_adam_m),
    # tails of every SIMD width, several fixed-size blocks, the threaded path
    "grad_norm_sq": KernelCases(_shapes("n", (1,), (7,), (1003,), (32768 * 3 + 5,),
                                        ((1 << 17) + 9,)), _norm, (), rtol=1e-12,
                                returns=True, model_shapes=_norm_m),
}


# ---- the whole model and generation ----------------------------------------------------------
MODEL_CASES: list[dict[str, Any]] = [
    {"tie": False, "act": "gelu"}, {"tie": True, "act": "relu"},
    # llama: multi-query and tied; grouped (3 query heads per KV head) and untied
    {"tie": True, "act": "gelu", "arch": "llama", "kv": 1},
    {"tie": False, "act": "gelu", "arch": "llama", "kv": 2}]


def _model_pair(backend: Backend, tie: bool, act: str, arch: str = "gpt2",
                kv: int | None = None) -> tuple[Any, Any]:
    """The same small model (dropout 0.1) on the numpy backend and on `backend`."""
    from ..config import ModelConfig
    from ..model import SLLM
    heads = 6 if arch == "llama" else 3  # llama: an even head dim (4) for the rotary pairs
    cfg = ModelConfig(vocab_size=67, embedding_dim=24, num_layers=2, num_heads=heads,
                      ffn_hidden_dim=40, dropout=0.1, max_seq_len=16, activation=act,
                      tie_embeddings=tie, architecture=arch, num_kv_heads=kv)
    return SLLM(cfg, backend=_reference_backend(), seed=3), SLLM(cfg, backend=backend, seed=3)


def check_model(backend: Backend, index: int) -> list[Check]:
    """Logits (eval), loss and every gradient (train mode, dropout on) against numpy."""
    case = MODEL_CASES[index]
    label = case_label(case)
    ref, mine = _model_pair(backend, **case)
    rng = _rng("model", index)
    x, y = rng.integers(0, 67, (2, 13)), rng.integers(0, 67, (2, 13))
    y[1, :4] = -1
    checks = [compare("model", label, "logits", mine.eval().forward(x), ref.eval().forward(x),
                      rtol=1e-4, atol=1e-4, scale=1.0)]
    ref.train(), mine.train()  # dropout on: the counter-based masks must agree too
    checks.append(compare("model", label, "loss", mine.forward_backward(x, y),
                          ref.forward_backward(x, y), rtol=1e-5, atol=0.0))
    for name, g in ref.gradients().items():
        scale = float(np.abs(g).max()) + 1e-6  # relative to the tensor's largest gradient
        checks.append(compare("model", label, f"grad {name}", mine.gradients()[name], g,
                              rtol=0.0, atol=1e-4, scale=scale))
    return checks


def check_generate(backend: Backend, index: int) -> list[Check]:
    """Generation: logits of KV-cache decoding, step by step, and greedy ids against numpy."""
    case = MODEL_CASES[index]
    label = case_label(case)
    ref, mine = (m.eval() for m in _model_pair(backend, **case))
    tokens = _rng("generate", index).integers(0, 67, (1, 16))

    def decode_rows(model: Any) -> np.ndarray:
        cache = model.new_cache(1)
        rows = [model.decode(tokens[:, :5], cache)[0]]
        rows += [model.decode(tokens[:, t:t + 1], cache)[0] for t in range(5, 16)]
        return np.concatenate(rows)

    checks = [compare("generate", label, "decode logits", decode_rows(mine), decode_rows(ref),
                      rtol=1e-4, atol=1e-4, scale=1.0)]
    prompt = [int(t) for t in tokens[0, :3]]
    want, got = ref.generate(prompt, 9, temperature=0), mine.generate(prompt, 9, temperature=0)
    differ = sum(a != b for a, b in zip(want, got, strict=False)) + abs(len(want) - len(got))
    checks.append(Check("generate", label, "greedy ids (count differing)", float(differ), 0.0,
                        differ == 0))
    return checks


# ---- selecting and running cases -----------------------------------------------------------
WHOLE_MODEL = {"model": check_model, "generate": check_generate}


@dataclass(frozen=True)
class Case:
    """One case of the suite: a kernel (or "model", "generate") and a shape index."""

    section: str
    index: int

    @property
    def label(self) -> str:
        """The shape, as printed in reports and test ids."""
        shapes = CASES[self.section].shapes if self.section in CASES else MODEL_CASES
        return case_label(shapes[self.index])

    @property
    def needs_llama(self) -> bool:
        """A llama kernel, a grouped-query attention shape or a llama model: checked only on
        a backend that provides the llama kernels (a GPT-2-only backend skips it)."""
        if self.section in LLAMA_KERNELS:
            return True
        shapes = CASES[self.section].shapes if self.section in CASES else MODEL_CASES
        shape = shapes[self.index]
        return shape.get("Hkv") is not None or shape.get("arch") == "llama"

    def run(self, backend: Backend) -> list[Check]:
        """Run this case on `backend`; an exception in the backend is a failed check."""
        try:
            if self.section in CASES:
                return check_kernel(backend, self.section, self.index)
            return WHOLE_MODEL[self.section](backend, self.index)
        except Exception as e:  # noqa: BLE001 - a crashing kernel is reported as a failure
            return [Check(self.section, self.label, f"raised {type(e).__name__}: {e}",
                          math.inf, 0.0, False)]


def sections() -> list[str]:
    """Every section of the suite: the kernels of the contract (required, then optional),
    then model and generate."""
    return [*KERNELS, *LLAMA_KERNELS, *OPTIONAL_KERNELS, *WHOLE_MODEL]


def select(patterns: Iterable[str] | None = None) -> list[str]:
    """Sections whose name contains one of `patterns` (all when none); unknown ones raise."""
    patterns = [p for p in (patterns or []) if p]
    if not patterns:
        return sections()
    chosen = [s for s in sections() if any(p in s for p in patterns)]
    unmatched = [p for p in patterns if not any(p in s for s in sections())]
    if unmatched:
        raise ValueError(f"no kernel matches {', '.join(map(repr, unmatched))}; the suite has "
                         f"{', '.join(sections())}")
    return chosen


def cases(patterns: Iterable[str] | None = None) -> list[Case]:
    """The cases of the selected sections."""
    out: list[Case] = []
    for section in select(patterns):
        if section not in CASES and section not in WHOLE_MODEL:
            raise KeyError(f"kernel {section!r} of the contract has no entry in "
                           f"conformance.CASES")
        count = len(CASES[section].shapes) if section in CASES else len(MODEL_CASES)
        out.extend(Case(section, i) for i in range(count))
    return out


def run(backend: Backend | str, patterns: Iterable[str] | None = None, perf: bool = False,
        repeats: int = 20) -> Report:
    """Check `backend` (a name or an instance) against the reference; time it if perf."""
    from . import get
    be = get(backend) if isinstance(backend, str) else backend
    report = Report(be.name)
    llama = not be.missing_llama_kernels()
    for case in cases(patterns):
        if case.needs_llama and not llama:
            report.skipped.append(f"{case.section} [{case.label}]")
            continue
        report.checks.extend(case.run(be))
    if perf:
        report.timings = [time_kernel(be, k, repeats) for k in select(patterns) if k in CASES]
    return report


def time_kernel(backend: Backend, kernel: str, repeats: int = 20) -> dict[str, Any]:
    """Median time of `kernel` on its largest case, on the backend and on the reference."""
    spec = CASES[kernel]
    index = max(range(len(spec.shapes)), key=lambda i: _work(spec.shapes[i]))
    shape = {k: v for k, v in spec.shapes[index].items() if k != "in_place"}
    args = spec.args(_rng(kernel, index), **shape)
    row: dict[str, Any] = {"kernel": kernel, "case": case_label(shape)}
    for who, be in (("reference", _reference_backend()), ("backend", backend)):
        call = functools.partial(getattr(be, kernel), *on_backend(be, args, spec))
        row[f"{who}_s"] = float(np.median(timed(call, repeats)))
    row["speedup"] = row["reference_s"] / row["backend_s"] if row["backend_s"] else math.inf
    return row


def _work(shape: dict[str, Any]) -> float:
    """A rough size of a case, to pick the largest one for timing."""
    sizes = [max(v, 1) for k, v in shape.items() if isinstance(v, int)
             and not isinstance(v, bool) and k not in ("seed", "step")]
    return float(np.prod(sizes))


# ---- the report ----------------------------------------------------------------------------
def render(report: Report, verbose: bool = False) -> str:
    """The report as text: one line per kernel (all its cases), then failures in detail."""
    lines = [f"conformance of backend {report.backend!r} against the numpy reference",
             f"{'kernel':<22} {'cases':>5} {'checks':>6} {'max error':>10} {'tolerance':>10}  result"]
    by_section: dict[str, list[Check]] = {}
    for check in report.checks:
        by_section.setdefault(check.kernel, []).append(check)
    for section, checks in by_section.items():
        worst = max(checks, key=_used)
        ok = all(c.passed for c in checks)
        ncases = len({c.case for c in checks})
        lines.append(f"{section:<22} {ncases:>5} {len(checks):>6} {worst.error:>10.2e} "
                     f"{worst.allowed:>10.2e}  {'ok' if ok else 'FAIL'}")
    shown = report.checks if verbose else report.failures()
    if shown:
        lines.append("")
        lines.append("details:" if verbose else "failures:")
        lines += [f"  {c.kernel} [{c.case}] {c.output}: error {c.error:.3e}, allowed "
                  f"{c.allowed:.3e}  {'ok' if c.passed else 'FAIL'}" for c in shown]
    if report.timings:
        lines += ["", f"{'kernel':<22} {'case':<44} {'numpy':>10} {report.backend:>10} {'speedup':>8}"]
        lines += [f"{t['kernel']:<22} {t['case']:<44} {_us(t['reference_s']):>10} "
                  f"{_us(t['backend_s']):>10} {t['speedup']:>7.2f}x" for t in report.timings]
    if report.skipped:
        lines += ["", f"skipped {len(report.skipped)} llama cases: the backend lacks the llama "
                      f"kernels (it runs GPT-2 models only)"]
    failed = len(report.failures())
    lines.append("")
    lines.append(f"{len(report.checks) - failed} of {len(report.checks)} checks passed" +
                 ("" if not failed else f"; {failed} FAILED"))
    return "\n".join(lines)


def _used(check: Check) -> float:
    """How much of its tolerance a check used (inf for a failure with no tolerance)."""
    if check.error == 0:
        return 0.0
    return check.error / check.allowed if check.allowed else math.inf


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}us" if seconds < 1e-3 else f"{seconds * 1e3:.2f}ms"
