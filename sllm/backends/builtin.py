"""The built-in backends, registered through the same hook a third-party plugin uses."""
from __future__ import annotations

from collections.abc import Callable

from ..hookspecs import hookimpl
from .base import Backend


@hookimpl
def register_backends(register: Callable[[type], None]) -> None:
    """Register numpy, cpp, wasm and wasm-simd; cpp and wasm probe lazily for their binaries."""
    from .numpy_ref import NumpyBackend
    register(NumpyBackend)
    for loader in (_cpp_backends, _wasm_backends):
        for cls in loader():
            register(cls)


def _cpp_backends() -> list[type[Backend]]:
    try:
        from .cpp import CppBackend
    except ImportError:
        return []
    return [CppBackend]


def _wasm_backends() -> list[type[Backend]]:
    try:
        from .wasm import WasmBackend, WasmSimdBackend
    except ImportError:
        return []
    return [WasmBackend, WasmSimdBackend]
