"""WebAssembly runtimes that host the sllm modules: wasmtime (default) and wasmer.

Both expose the same small surface to the backend: instantiate a module with an EMPTY
import object (the modules are freestanding, as they would be in a browser), the base
address and size of its linear memory, growing it, and zero-argument kernel calls (the
kernels read their arguments from a parameter block in linear memory; see wasm/abi.h).

Linear memory must never move: the backend hands out numpy views into it for the model's
lifetime. wasmtime is configured with a 4 GiB reservation and memory_may_move=False;
wasmer reserves 4 GiB for 32-bit memories by default. Each runtime checks after every
growth that the base address is unchanged and raises if it ever is not.
"""
from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily at run time: wasmtime is optional
    import wasmtime

WASM_PAGE = 65536
MAX_PAGES = 65536  # a 32-bit memory: 4 GiB
RESERVATION = WASM_PAGE * MAX_PAGES


class RuntimeUnavailable(RuntimeError):
    """The runtime is not installed, or rejects the module (e.g. no SIMD support)."""


class Runtime:
    """One instance of one module in one runtime."""

    name = "base"

    def __init__(self, wasm: bytes, relaxed_simd: bool = False) -> None:
        """Compile and instantiate `wasm` (relaxed_simd: it uses the relaxed-SIMD proposal)."""

    def base_address(self) -> int:
        """Host address of byte 0 of linear memory."""
        raise NotImplementedError("base_address")

    def memory_size(self) -> int:
        """Current size of linear memory in bytes."""
        raise NotImplementedError("memory_size")

    def grow(self, pages: int) -> bool:
        """Grow linear memory by `pages`; False when the runtime refuses."""
        raise NotImplementedError("grow")

    def kernel(self, name: str) -> Callable[[], None]:
        """A zero-argument callable running the exported kernel `name`."""
        raise NotImplementedError("kernel")

    def call_i32(self, name: str) -> int:
        """Call a zero-argument export that returns one i32 (used at start-up only)."""
        raise NotImplementedError("call_i32")

    def _check_base(self, before: int) -> None:
        if self.base_address() != before:
            raise RuntimeError(f"{self.name}: linear memory moved on growth; "
                               "numpy views into it would dangle")


class WasmtimeRuntime(Runtime):
    """wasmtime-py, with calls through wasmtime_func_call_unchecked (no per-call type checks)."""

    name = "wasmtime"

    def __init__(self, wasm: bytes, relaxed_simd: bool = False):
        try:
            import wasmtime
            from wasmtime import _ffi as ffi
        except ImportError as e:
            raise RuntimeUnavailable(f"wasmtime is not importable: {e}") from e
        self._engine = wasmtime.Engine(self._config(wasmtime, relaxed_simd))
        self._store = wasmtime.Store(self._engine)
        try:
            self._module = wasmtime.Module(self._engine, wasm)
            self._instance = wasmtime.Instance(self._store, self._module, [])
        except wasmtime.WasmtimeError as e:
            raise RuntimeUnavailable(f"wasmtime rejects the module: {_first_line(e)}") from e
        _LIVE_WASMTIME.add(self)
        self._exports = self._instance.exports(self._store)
        memory = self._exports["memory"]
        if not isinstance(memory, wasmtime.Memory):
            raise RuntimeUnavailable(f"the module's export 'memory' is a {type(memory).__name__}")
        self._memory = memory
        self._ffi, self._wasmtime = ffi, wasmtime
        self._context = self._store._context()

    @staticmethod
    def _config(wasmtime: Any, relaxed_simd: bool) -> Any:
        """SIMD on; linear memory reserved at its 4 GiB maximum so that it never moves."""
        config = wasmtime.Config()
        config.wasm_simd = True
        config.wasm_relaxed_simd = relaxed_simd
        config.memory_reservation = RESERVATION
        config.memory_may_move = False
        return config

    def base_address(self) -> int:
        ptr = self._memory.data_ptr(self._store)
        return ctypes.cast(ptr, ctypes.c_void_p).value or 0

    def memory_size(self) -> int:
        return self._memory.data_len(self._store)

    def grow(self, pages: int) -> bool:
        before = self.base_address()
        try:
            self._memory.grow(self._store, pages)
        except self._wasmtime.WasmtimeError:
            return False
        self._check_base(before)
        return True

    def kernel(self, name: str) -> Callable[[], None]:
        func = self._func(name)
        ffi, context, wasmtime = self._ffi, self._context, self._wasmtime
        call = ffi.dll.wasmtime_func_call_unchecked
        func_ref = ctypes.byref(func._func)
        values = (ffi.wasmtime_val_raw_t * 1)()
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        trap_ref = ctypes.byref(trap)

        def run() -> None:
            error = call(context, func_ref, values, 1, trap_ref)
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)
            if trap:
                owned = ctypes.cast(ctypes.addressof(trap.contents), type(trap))
                ctypes.memset(ctypes.addressof(trap), 0, ctypes.sizeof(trap))  # reuse: clear
                raise wasmtime.Trap._from_ptr(owned)
        return run

    def call_i32(self, name: str) -> int:
        return int(self._func(name)(self._store))

    def _func(self, name: str) -> wasmtime.Func:
        """The exported function `name`."""
        func = self._exports[name]
        if not isinstance(func, self._wasmtime.Func):
            raise RuntimeError(f"wasm export {name!r} is a {type(func).__name__}, not a function")
        return func


class WasmerRuntime(Runtime):
    """wasmer-python 1.x with the Cranelift compiler (real wheels only for Python <= 3.10)."""

    name = "wasmer"

    def __init__(self, wasm: bytes, relaxed_simd: bool = False):
        if relaxed_simd:
            raise RuntimeUnavailable("wasmer 1.x does not support relaxed SIMD")
        try:
            import wasmer
            import wasmer_compiler_cranelift
        except ImportError as e:
            raise RuntimeUnavailable(f"wasmer is not importable: {e}") from e
        store = wasmer.Store(wasmer.engine.Universal(wasmer_compiler_cranelift.Compiler))
        try:
            self._instance = wasmer.Instance(wasmer.Module(store, wasm), wasmer.ImportObject())
        except Exception as e:  # wasmer raises plain RuntimeError/TypeError
            raise RuntimeUnavailable(f"wasmer rejects the module: {_first_line(e)}") from e
        self._exports = self._instance.exports
        self._memory = self._exports.memory

    def base_address(self) -> int:
        buffer = self._memory.buffer
        return ctypes.addressof(ctypes.c_ubyte.from_buffer(buffer))

    def memory_size(self) -> int:
        return self._memory.data_size

    def grow(self, pages: int) -> bool:
        before = self.base_address()
        try:
            self._memory.grow(pages)
        except Exception:  # noqa: BLE001 - wasmer reports a refused growth as RuntimeError
            return False
        self._check_base(before)
        return True

    def kernel(self, name: str) -> Callable[[], None]:
        return getattr(self._exports, name)

    def call_i32(self, name: str) -> int:
        return int(getattr(self._exports, name)())


_LIVE_WASMTIME: weakref.WeakSet[WasmtimeRuntime] = weakref.WeakSet()


@atexit.register
def _release_at_exit() -> None:
    # numpy views may outlive the interpreter's teardown of wasmtime's ffi module, whose
    # destructors would then fail noisily; at exit the process frees the memory anyway.
    for runtime in list(_LIVE_WASMTIME):
        for owner in (runtime._store, runtime._module, runtime._engine):
            owner._consume()


RUNTIMES: dict[str, type[Runtime]] = {"wasmtime": WasmtimeRuntime, "wasmer": WasmerRuntime}


def runtime_name() -> str:
    """The runtime to use: SLLM_WASM_RUNTIME if set, else wasmtime when importable, else wasmer."""
    chosen = os.environ.get("SLLM_WASM_RUNTIME", "").strip().lower()
    if chosen:
        if chosen not in RUNTIMES:
            raise RuntimeUnavailable(f"SLLM_WASM_RUNTIME={chosen!r}: expected one of "
                                     f"{', '.join(RUNTIMES)}")
        return chosen
    if importlib.util.find_spec("wasmtime") is None and wasmer_importable():
        return "wasmer"
    return "wasmtime"


def wasmer_importable() -> bool:
    """True when wasmer and its Cranelift compiler import (not the stub wheel of 3.11+)."""
    try:
        import wasmer  # noqa: F401 - imported only to see that it imports
        import wasmer_compiler_cranelift  # noqa: F401 - imported only to see that it imports
    except ImportError:
        return False
    return True


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
