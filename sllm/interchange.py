"""The roadmap's JSON interchange format: config, vocabulary and weights as nested lists.

It is large and slow (see docs/binary-format.md for the measured size ratios) but any
language can read it; `sllm convert` turns it into the binary format and back. This module
reads and writes plain data (a config, arrays, dicts); sllm.model builds the SLLM from it.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import budget
from .config import ModelConfig
from .errors import ConfigError, FormatError
from .fileio import atomic_write
from .finite import check_weights
from .layout import Layout

FORMAT = "sllm-json"
JSON_FACTOR = 12  # bytes of Python objects per byte of JSON numbers while parsing


@dataclass
class JsonModel:
    """A JSON model file's contents, checked: the config, every weight as a float32 array
    of the shape the config gives it, the vocabulary and the metadata."""

    config: ModelConfig
    weights: dict[str, np.ndarray]
    vocab: Any
    metadata: dict[str, Any]


def write_json(path: str | os.PathLike[str], config: dict[str, Any],
               weights: dict[str, np.ndarray], vocab: Any = None,
               metadata: dict[str, Any] | None = None) -> None:
    """Write {"format", "config", "vocab", "metadata", "weights": {name: nested lists}}."""
    doc = {"format": FORMAT, "version": 1, "config": config, "vocab": vocab,
           "metadata": metadata or {},
           "weights": {name: np.asarray(w).tolist() for name, w in weights.items()}}
    with atomic_write(path) as f:
        f.write(json.dumps(doc, separators=(",", ":")).encode("utf-8"))


def read_json(path: str | os.PathLike[str]) -> JsonModel:
    """Read and check a JSON model; any malformation raises FormatError naming what is wrong."""
    doc = _read(path)
    try:
        config = ModelConfig.from_dict(doc.get("config"))
    except (ConfigError, TypeError) as e:
        raise FormatError(f"{path}: config: {e}") from None
    weights = doc.get("weights")
    if not isinstance(weights, dict):
        raise FormatError(f"{path}: 'weights' must be an object of name -> nested lists")
    if 2 * config.num_parameters() > os.path.getsize(path):  # each number takes >= 2 bytes
        raise FormatError(f"{path}: weights missing or truncated: the config needs "
                          f"{config.num_parameters():,} parameters, more than a file of "
                          f"{os.path.getsize(path):,} bytes can hold")
    vocab, metadata = _vocab_and_metadata(doc, path)
    layout = Layout(config)
    missing = sorted(set(layout.slots) - set(weights))
    if missing:
        raise FormatError(f"{path}: weights missing: {', '.join(missing[:5])}")
    arrays = {name: _tensor(weights[name], slot.shape, name, path)
              for name, slot in layout.slots.items()}
    check_weights(arrays, path)
    return JsonModel(config, arrays, vocab, metadata)


def _vocab_and_metadata(doc: dict[str, Any], path: Any) -> tuple[Any, dict[str, Any]]:
    """The "vocab" (null or a tokenizer object) and "metadata" (an object), as the binary
    format's reader requires them."""
    vocab, metadata = doc.get("vocab"), doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise FormatError(f"{path}: 'metadata' must be an object, got {type(metadata).__name__}")
    if vocab is not None and not (isinstance(vocab, dict) and isinstance(vocab.get("type"), str)):
        raise FormatError(f"{path}: 'vocab' must be null or a tokenizer object with a "
                          f"\"type\", got {type(vocab).__name__}")
    return vocab, metadata or {}


def _read(path: Any) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise FormatError(f"{path}: not a regular file")
            budget.check_read(path, os.fstat(f.fileno()).st_size, JSON_FACTOR, "JSON model")
            doc = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, not a JSON model file") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"{path}: not valid UTF-8 JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format", FORMAT) != FORMAT:
        raise FormatError(f"{path}: not an sllm JSON model (expected an object with "
                          f"format {FORMAT!r})")
    return doc


def _tensor(value: Any, shape: tuple[int, ...], name: str, path: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise FormatError(f"{path}: weight {name!r} is not a rectangular array of numbers") \
            from None
    if arr.shape != shape:
        raise FormatError(f"{path}: weight {name!r} has shape {arr.shape}, the config needs "
                          f"{shape}")
    return arr
