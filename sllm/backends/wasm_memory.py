"""A first-fit allocator over WebAssembly linear memory, and numpy views into it.

The host owns the heap (from the module's __heap_base up): allocation needs no call
into the module, and freed blocks are merged with their neighbours. When no free block
fits, linear memory grows by whole pages; when it cannot grow, BackendError says how much
was asked for, how much is in use and what the limit is.

JavaScript twin: sllm/web/kernels.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

import bisect
import ctypes
from typing import Any

import numpy as np

from ..errors import BackendError
from .wasm_runtime import RESERVATION, WASM_PAGE, Runtime

ALIGN = 64  # bytes: a cache line, and a multiple of every SIMD width


class _Arena(ctypes.c_ubyte * RESERVATION):  # type: ignore[misc]  # a ctypes array type; mypy takes it for a value
    """The whole 4 GiB address range of linear memory as one buffer; views slice it.

    Only the committed prefix is ever touched. It holds the runtime, so numpy views keep
    the instance (and its memory) alive for as long as they exist."""


class LinearMemory:
    """Allocations in one module instance's linear memory, handed out as numpy arrays."""

    def __init__(self, runtime: Runtime, heap_base: int, limit_bytes: int = RESERVATION):
        self.runtime = runtime
        self.limit = min(limit_bytes, RESERVATION)
        self.arena = _Arena.from_address(runtime.base_address())
        self.arena.runtime = runtime
        self.base = ctypes.addressof(self.arena)  # host address of byte 0; never moves
        start = _align(heap_base)
        self.end = runtime.memory_size()
        self._free: list[tuple[int, int]] = [(start, self.end - start)] if self.end > start else []
        self._used: dict[int, int] = {}

    def in_use(self) -> int:
        """Bytes currently allocated."""
        return sum(self._used.values())

    def array(self, shape: Any, dtype: Any) -> np.ndarray:
        """A new uninitialised array in linear memory."""
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        count = int(np.prod(shape, dtype=np.int64))
        offset = self.alloc(count * dtype.itemsize)
        return self.view(offset, shape, dtype)

    def view(self, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The array of `shape` at byte `offset` (no copy)."""
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self.arena, dtype, count, offset).reshape(shape)

    def offset_of(self, array: np.ndarray) -> int:
        """Byte offset of `array` in linear memory, or -1 if it lives elsewhere."""
        offset = array.__array_interface__["data"][0] - self.base
        return offset if 0 <= offset and offset + array.nbytes <= self.end else -1

    def alloc(self, nbytes: int) -> int:
        """Byte offset of a new block of at least nbytes (64-byte aligned)."""
        size = _align(max(nbytes, 1))
        for i, (offset, free_size) in enumerate(self._free):
            if free_size >= size:
                self._take(i, offset, free_size, size)
                return offset
        self._grow_for(size)
        return self.alloc(size)

    def free(self, offset: int) -> None:
        """Return the block at `offset` to the free list, merging with its neighbours."""
        size = self._used.pop(offset, None)
        if size is None:
            raise ValueError(f"offset {offset} is not the start of a live allocation")
        self._insert_free(offset, size)

    def _take(self, i: int, offset: int, free_size: int, size: int) -> None:
        if free_size == size:
            del self._free[i]
        else:
            self._free[i] = (offset + size, free_size - size)
        self._used[offset] = size

    def _insert_free(self, offset: int, size: int) -> None:
        i = bisect.bisect_left(self._free, (offset, 0))
        if i < len(self._free) and offset + size == self._free[i][0]:
            size += self._free.pop(i)[1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == offset:
            offset, size = self._free[i - 1][0], self._free[i - 1][1] + size
            del self._free[i - 1]
            i -= 1
        self._free.insert(i, (offset, size))

    def _grow_for(self, size: int) -> None:
        tail = self._free[-1][1] if self._free and sum(self._free[-1]) == self.end else 0
        pages = -(-(size - tail) // WASM_PAGE)
        try:
            grown = self.end + pages * WASM_PAGE <= self.limit and self.runtime.grow(pages)
        except RuntimeError as e:  # the runtime moved linear memory: views would dangle
            raise BackendError(f"WebAssembly memory growth failed: {e}") from e
        if not grown:
            raise BackendError(
                f"out of WebAssembly linear memory: cannot allocate {size / 2**20:.1f} MiB "
                f"({self.in_use() / 2**20:.1f} MiB in use, limit {self.limit / 2**20:.0f} MiB "
                f"of a 32-bit address space); use smaller batches or model, or the numpy/cpp "
                f"backend")
        old_end, self.end = self.end, self.runtime.memory_size()
        self._insert_free(old_end, self.end - old_end)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN
