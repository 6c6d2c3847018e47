"""Keep numpy's BLAS threads off the cores a compiled backend computes on.

With the cpp backend, numpy's BLAS (OpenBLAS, MKL) is only glue between kernels, yet
each BLAS call wakes BLAS's own thread pool, whose threads then spin against the
backend's threads on the same cores. `blas_limited(backend)` limits BLAS to one thread
(threadpoolctl) while a backend that runs its own matmuls works, and restores the
previous limits afterwards. The numpy backend keeps every BLAS thread: BLAS is its
compute.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_controller: Any = None


def _blas_controller() -> Any:
    """One threadpoolctl controller for the process (building one scans loaded libraries)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()
    return _controller


def needs_blas(backend: Any) -> bool:
    """True when the backend's matmuls are numpy's (the reference), so BLAS is its compute."""
    return "matmul_fwd" in getattr(backend, "reference_kernels", ())


@contextlib.contextmanager
def blas_limited(backend: Any) -> Iterator[None]:
    """Within the block, numpy's BLAS uses one thread unless the backend needs BLAS."""
    if needs_blas(backend):
        yield
        return
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield
