"""Checks every importer of a foreign format (HF, GGUF, llama2.c, tokenizer files) runs
before it allocates: metadata values of the right type, a config whose parameters the
file can actually hold, a model the memory budget allows, and tensors that match the
config exactly (none missing, none extra, every shape equal). A forged `n_layer:
2147483648` is then a one-line error, not gigabytes of allocation before one.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import budget
from .errors import FormatError

MIN_BYTES_PER_WEIGHT = 18 / 32  # the densest storage any importer reads: q4_0's blocks
MAX_METADATA_BYTES = 16 << 20  # config.json, tokenizer_config.json: a few KiB in practice


def read_json_object(path: str | os.PathLike[str], limit: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    """A JSON file that must hold an object, read only when smaller than `limit`."""
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise FormatError(f"{path}: {size:,} bytes; metadata files are at most {limit:,}")
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise FormatError(f"{path}: not valid JSON ({e or 'nested too deeply'})") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot read it ({e})") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def get_int(doc: Mapping[str, Any], key: str, where: Any, default: Any = None) -> Any:
    """doc[key] as an int (bool refused), or `default` when absent or null."""
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{where}: {key} must be an integer, got {value!r}")
    return value


def get_float(doc: Mapping[str, Any], key: str, where: Any, default: float) -> float:
    """doc[key] as a float (ints accepted, bool refused), or `default` when absent or null."""
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FormatError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def get_bool(doc: Mapping[str, Any], key: str, where: Any, default: bool) -> bool:
    """doc[key], which must be true or false (1, -1 or "yes" are refused), or `default`."""
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FormatError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def check_fits(config: Any, file_bytes: int, where: Any) -> None:
    """Refuse a config whose weights the file cannot hold, or the memory budget cannot,
    before its layout or its model is built."""
    count = config.num_parameters()
    if count * MIN_BYTES_PER_WEIGHT > file_bytes:
        raise FormatError(f"{where}: the config needs {count:,} parameters, more than a file "
                          f"of {file_bytes:,} bytes can hold")
    budget.check_model(config)


def match_tensors(present: Mapping[str, tuple[int, ...]], needed: Mapping[str, tuple[int, ...]],
                  where: Any) -> None:
    """Refuse tensors that do not match the config exactly: missing, extra (e.g. a layer
    the config drops) or of another shape. Names are the file's own."""
    match_names(present, needed, where)
    for name, shape in needed.items():
        if tuple(present[name]) != tuple(shape):
            raise FormatError(f"{where}: tensor {name!r} has shape {tuple(present[name])}; "
                              f"the config needs {tuple(shape)}")


def match_names(present: Mapping[str, Any], needed: Mapping[str, Any], where: Any) -> None:
    """Refuse a file whose tensor names are not exactly the config's: one missing, or one
    extra (a layer the config would silently drop)."""
    missing = [n for n in needed if n not in present]
    if missing:
        raise FormatError(f"{where}: tensor {missing[0]!r} is missing"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(present) - set(needed))
    if extra:
        raise FormatError(f"{where}: tensor {extra[0]!r} is not part of the model the config "
                          f"describes ({len(extra)} such); the config and the weights disagree")


def decode_tensor(raw: np.ndarray, ttype: str, shape: tuple[int, ...], name: str,
                   path: Any) -> np.ndarray:
    """A foreign file's tensor as float32 of `shape`: f32/f16 widened, ggml q8_0/q4_0/q4_1 rows
    dequantized (their scales checked finite first); any other type refused by name."""
    if ttype in ("f32", "f16"):
        arr = raw.astype(np.float32)
    elif ttype in ("q8_0", "q4_0", "q4_1"):
        from .finite import check_weights
        from .quant import dequantize
        rows = raw.reshape(-1, raw.shape[-1])
        check_weights({name: rows}, path, {name: (ttype, shape)})  # NaN scales, by name
        arr = dequantize(rows, ttype, shape[-1])
    else:
        raise FormatError(f"{path}: tensor {name!r} has type {ttype}; sllm reads f32, f16, "
                          f"q8_0, q4_0 and q4_1")
    if arr.size != int(np.prod(shape)):
        raise FormatError(f"{path}: tensor {name!r} has {arr.size} values, the config needs "
                          f"shape {shape}")
    return arr.reshape(shape)
