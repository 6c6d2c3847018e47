"""The `cpp` backend: the C++ kernels of the extension `sllm._cpp` (built from cpp/).

Each kernel of the contract is the compiled function itself (`kernel_module = sllm._cpp`,
bound as a static method when the class is created), so a kernel call costs one pybind11
dispatch and no Python frame. The extension checks
dtypes, contiguity and shapes, works in place on the numpy buffers and releases the GIL.

The extension picks its SIMD tier (avx512, avx2, scalar) from the CPU at import time;
SLLM_CPP_SIMD forces one. Kernels use SLLM_NUM_THREADS threads (default: every core this
process may run on; parsed by sllm.threads); `set_num_threads` changes it. Results do not depend on the thread
count beyond float rounding.
"""
from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import numpy as np

from ..threads import default_threads
from .base import Backend


def _import_extension() -> tuple[Any, str]:
    """Import sllm._cpp, returning (module, "") or (None, why not)."""
    try:
        from .. import _cpp as module
        return module, ""
    except ImportError as error:  # built without a compiler, or a broken build
        return None, f"the C++ extension sllm._cpp is not built or failed to load ({error})"


_cpp, _IMPORT_ERROR = _import_extension()
if _cpp is not None:  # the pool's size before any backend exists (`sllm backends` shows it)
    with contextlib.suppress(ValueError):  # a bad SLLM_NUM_THREADS: refused by CppBackend()
        _cpp.set_num_threads(default_threads())


class CppBackend(Backend):
    """pybind11 C++ kernels with run-time SIMD dispatch and their own thread pool."""

    name: ClassVar[str] = "cpp"
    priority: ClassVar[int] = 100
    kernel_module: ClassVar[Any] = _cpp  # None when not built: probe() then says why

    def __init__(self) -> None:
        self.probe()
        super().__init__()
        self.set_num_threads(default_threads())

    @classmethod
    def probe(cls) -> dict[str, Any]:
        """Capabilities of the extension here, or raise RuntimeError saying why it cannot run."""
        if _cpp is None:
            raise RuntimeError(_IMPORT_ERROR)
        if _cpp.simd_error():
            raise RuntimeError(_cpp.simd_error())
        return {"simd": _cpp.simd_level(), "threads": _cpp.get_num_threads(),
                "thread_pool": _cpp.thread_pool, "attention": "flash (saves logsumexp)",
                "dtype": "float32"}

    def set_num_threads(self, n: int) -> None:
        """Use n >= 1 threads in every kernel (process-wide: the pool's setting)."""
        if int(n) < 1:
            raise ValueError(f"number of threads must be >= 1, got {n}")
        _cpp.set_num_threads(int(n))

    def peak_gflops(self, seconds: float = 0.2) -> float:
        """This machine's FP32 peak on the kernel threads (FMA chains, widest vectors)."""
        return float(_cpp.peak_gflops(seconds))

    def stream_read_gbps(self, seconds: float = 0.3, nbytes: int = 1 << 30) -> float:
        """Memory bandwidth: GB/s of a streaming read of nbytes on the kernel threads."""
        return float(_cpp.stream_read_gbps(seconds, nbytes))

    def pack_q(self, wq: Any, qtype: str) -> Any:
        """wq's rows interleaved for the quantized kernels' SIMD tier (an opaque
        sllm._cpp.PackedQ), made once per model; wq itself on the scalar tier."""
        return _cpp.pack_q(wq, qtype)

    def unpack_q(self, packed: Any, qtype: str) -> np.ndarray:
        """ggml's rows read back from a PackedQ (a new array); ggml's rows as they are."""
        return packed.unpack() if isinstance(packed, _cpp.PackedQ) else packed

    def pack_weight(self, weight: Any, trans_w: bool = False) -> Any:
        """weight copied into the GEMM's column panels (an opaque sllm._cpp.PackedF32 that
        keeps the weight too): 5 or more rows are multiplied from the panels without packing
        the weight on every call, fewer from the weight itself; the same results."""
        return _cpp.pack_weight(weight, trans_w)

    def attention_saved_shape(self, B: int, T: int, n_head: int) -> tuple[int, ...]:
        """attention_fwd saves one logsumexp per score row; backward recomputes the rest."""
        return (B, n_head, T)

