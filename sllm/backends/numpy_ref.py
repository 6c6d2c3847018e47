"""The `numpy` backend: every kernel is the plain numpy reference (sllm/backends/reference.py).

Call a kernel directly as `sllm.backends.reference.gelu_fwd(...)`; this module is only the
backend class that hands them to the model.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from . import reference
from .base import Backend


class NumpyBackend(Backend):
    """The reference backend: every kernel is the plain numpy code of reference.py.

    `NumpyBackend(dtype=np.float64)` runs the whole model in double precision, which the
    finite-difference gradient checks use.
    """

    name: ClassVar[str] = "numpy"
    priority: ClassVar[int] = 50
    kernel_module: ClassVar[Any] = reference

    def __init__(self, dtype: Any = np.float32) -> None:
        self.dtype = np.dtype(dtype)

    @classmethod
    def probe(cls) -> dict[str, Any]:
        """Always available; reports the BLAS numpy was built with."""
        return {"blas": _blas_name(), "dtype": "float32|float64"}


def _blas_name() -> str:
    try:
        config = np.show_config(mode="dicts")
        return config["Build Dependencies"]["blas"]["name"]
    except Exception:  # noqa: BLE001 - older numpy has no dict form; the name is cosmetic
        return "unknown"
