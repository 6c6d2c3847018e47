"""NaN is never an answer: non-finite weights are refused where a model enters (a model
file, an import), and non-finite logits stop eval and generation with an error naming
where they first appear, instead of printing `loss nan` or an empty continuation.

The weight check is one vectorised pass in chunks (a bounded temporary, whatever the
tensor's size); quantized tensors are checked through their block scales (and q4_1's
minimums), the only floats they hold.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import FormatError, SLLMError

CHUNK = 1 << 20  # elements per pass: a 1 MiB boolean temporary at most


class NonFiniteError(SLLMError, ArithmeticError):
    """A computation produced NaN or infinity (the message names the first one)."""


def first_nonfinite(arr: np.ndarray) -> tuple[int, ...] | None:
    """The index of the first NaN or infinity in `arr` (C order), or None when all are
    finite. Reads `arr` once, CHUNK elements at a time."""
    if type(arr) is np.ndarray and arr.dtype.kind == "f" and arr.size <= CHUNK and \
            np.count_nonzero(np.isfinite(arr)) == arr.size:
        return None  # a row of logits (each decode step): one pass, no flat view or slices
    flat = np.asarray(arr).reshape(-1)
    if flat.dtype.kind != "f":
        return None
    for start in range(0, flat.size, CHUNK):
        ok = np.isfinite(flat[start:start + CHUNK])
        if np.count_nonzero(ok) != ok.size:  # ok.all()'s Python wrapper: +1.5 us a decode step
            at = start + int(np.argmin(ok))
            return tuple(int(i) for i in np.unravel_index(at, np.shape(arr)))
    return None


def _describe(value: Any) -> str:
    return "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")


def check_weights(tensors: Mapping[str, np.ndarray], where: Any,
                  quantized: Mapping[str, tuple[str, tuple[int, ...]]] | None = None) -> None:
    """FormatError naming the first tensor holding NaN or infinity, and the first index.

    `quantized` maps names of uint8 block tensors to (qtype, (rows, K)); their scales are
    checked (the index is then (row, block))."""
    quantized = quantized or {}
    for name, arr in tensors.items():
        if name in quantized:
            _check_blocks(name, arr, quantized[name][0], where)
            continue
        at = first_nonfinite(arr)
        if at is not None:
            raise FormatError(f"{where}: tensor {name!r} holds {_describe(arr[at])} at index "
                              f"{list(at)}; a model with non-finite weights gives no answer "
                              f"(was it saved from a diverged run?)")


def _check_blocks(name: str, data: np.ndarray, qtype: str, where: Any) -> None:
    from .quant import BLOCKS
    block = BLOCKS[qtype]
    rows = np.ascontiguousarray(data).view(block).reshape(data.shape[0], -1)
    for field in ("d", "m"):
        if field in (block.names or ()):
            at = first_nonfinite(rows[field])
            if at is not None:
                raise FormatError(
                    f"{where}: tensor {name!r} ({qtype}) has a {_describe(rows[field][at])} "
                    f"block {'scale' if field == 'd' else 'minimum'} at (row, block) "
                    f"{list(at)}; a model with non-finite weights gives no answer")


def check_f16_range(params: dict[str, np.ndarray]) -> None:
    """Refuse to store a weight f16 cannot hold (it would become inf and the model NaN)."""
    limit = float(np.finfo(np.float16).max)
    for name, p in params.items():
        largest = float(np.max(np.abs(p))) if p.size else 0.0
        if not largest <= limit:  # also catches NaN
            raise FormatError(f"cannot save as f16: tensor {name!r} holds a value of magnitude "
                             f"{largest:g}, beyond f16's largest finite value {limit:g}; "
                             f"save as f32 (the default) instead")


def check_logits(logits: np.ndarray, what: str) -> None:
    """NonFiniteError naming the first non-finite logit of `what` (its index and value)."""
    at = first_nonfinite(logits)
    if at is not None:
        raise NonFiniteError(f"{what}: the model's logits hold {_describe(logits[at])} at "
                             f"index {list(at)} (shape {list(np.shape(logits))}); the "
                             f"weights or the backend produce non-finite values, so there "
                             f"is no answer to give")
