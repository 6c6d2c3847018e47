"""The `numpy` backend: every kernel is the plain numpy reference (sllm/backends/reference.py).

The reference kernels are re-exported here for code written against the earlier layout
(`from sllm.backends import numpy_ref; numpy_ref.gelu_fwd(...)`).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from . import reference
from .base import Backend
from .reference import (  # noqa: F401 - re-exported: the kernels under their old module
    adam_update,
    attention_bwd,
    attention_decode,
    attention_fwd,
    dropout_bwd,
    dropout_fwd,
    encoder_bwd,
    encoder_fwd,
    gelu_bwd,
    gelu_fwd,
    grad_norm_sq,
    layernorm_bwd,
    layernorm_fwd,
    matmul_bwd,
    matmul_fwd,
    matmul_q_fwd,
    relu_bwd,
    relu_fwd,
    residual_fwd,
    sgd_update,
    softmax_xent,
)


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
