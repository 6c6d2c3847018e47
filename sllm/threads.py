"""Kernel threads: the one parser of SLLM_NUM_THREADS, the cores this process may use, and
numpy's BLAS threads kept off the cores a compiled backend computes on.

SLLM_NUM_THREADS, when set, is a positive integer (anything else is refused with its
value); unset or blank, kernels use every core this process may run on. The cpp backend
sets its pool from `default_threads()` when it is created; an MPI job sets the variable
per rank (sllm.distributed.default_threads).

With the cpp backend, numpy's BLAS (OpenBLAS, MKL) is only glue between kernels, yet
each BLAS call wakes BLAS's own thread pool, whose threads then spin against the
backend's threads on the same cores. `blas_limited(backend)` limits BLAS to one thread
(threadpoolctl) while a backend that runs its own matmuls works, and restores the
previous limits afterwards. The numpy backend keeps every BLAS thread: BLAS is its
compute.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

ENV = "SLLM_NUM_THREADS"
_controller: Any = None


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def env_threads() -> int | None:
    """SLLM_NUM_THREADS as a positive integer, None when unset or blank; ValueError (naming
    the variable and its value) otherwise."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ENV} must be a positive integer, got {text!r}")
    return int(text)


def default_threads() -> int:
    """Threads a kernel uses: SLLM_NUM_THREADS when set, else every core this process may use."""
    return env_threads() or cores()


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
