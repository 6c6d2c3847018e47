"""The built-in backends, registered through the same hook a third-party plugin uses."""
from ..hookspecs import hookimpl


@hookimpl
def register_backends(register):
    """Register numpy, cpp, wasm and wasm-simd; cpp and wasm probe lazily for their binaries."""
    from .numpy_ref import NumpyBackend
    register(NumpyBackend)
    for loader in (_cpp_backends, _wasm_backends):
        for cls in loader():
            register(cls)


def _cpp_backends():
    try:
        from .cpp import CppBackend
    except ImportError:
        return []
    return [CppBackend]


def _wasm_backends():
    try:
        from .wasm import WasmBackend, WasmSimdBackend
    except ImportError:
        return []
    return [WasmBackend, WasmSimdBackend]
