"""sllm: small transformer language models, trained and run fast on ordinary CPUs.

The public API: ModelConfig, SLLM, load, the error types, the plugin marker `hookimpl`,
and the submodules of LAZY_MODULES (`sllm.optim`, `sllm.quant`, ...). Everything but the
version and the error types is imported on first use (LAZY_NAMES), so that `import sllm`
stays fast, and so that the `sllm` command (sllm/_entry.py) can set up its signal handling
before numpy and the model load: `import sllm.X` runs this file first.
"""
from __future__ import annotations

from ._version import __version__
from .errors import BackendError, ConfigError, DataError, FormatError, LoraError, SLLMError

TYPE_CHECKING = False  # not typing's: importing typing costs the signal window 5 ms

if TYPE_CHECKING:
    from typing import Any

    from .config import ModelConfig
    from .hookspecs import hookimpl
    from .model import SLLM

__all__ = ["ModelConfig", "SLLM", "load", "load_json", "hookimpl", "BackendError",
           "ConfigError", "DataError", "FormatError", "LoraError", "SLLMError", "__version__"]


def load(path: Any, backend: Any = "auto", mmap: bool = True) -> SLLM:
    """Load a model saved by `SLLM.save` (the SLLM binary format)."""
    from .model import load_model
    return load_model(path, backend=backend, mmap=mmap)


def load_json(path: Any, backend: Any = "auto") -> SLLM:
    """Load a model from the roadmap's JSON interchange format."""
    from .model import load_json as _load_json
    return _load_json(path, backend=backend)


LAZY_MODULES = ("backends", "optim", "schedule", "tokenizer", "quant", "train", "data", "generate",
                "lora")
LAZY_NAMES = {"ModelConfig": "config", "SLLM": "model", "hookimpl": "hookspecs"}  # name: module


def __getattr__(name: str) -> Any:
    if name in LAZY_MODULES:
        return _import(f".{name}")
    if name in LAZY_NAMES:
        return getattr(_import(f".{LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module 'sllm' has no attribute {name!r}")


def _import(relative: str) -> Any:
    from importlib import import_module  # here, not at the top: see the module's docstring
    return import_module(relative, __name__)
