"""Each WebAssembly module on its own, for tests that check every module (not only the one
a runtime would pick): the modules with whether they use relaxed SIMD, and a wasm-simd
backend that runs just one of them."""
from __future__ import annotations

import pytest

from sllm.backends.wasm import WasmSimdBackend
from sllm.backends.wasm_runtime import RuntimeUnavailable

MODULES = [("sllm_scalar.wasm", False), ("sllm_simd128.wasm", False), ("sllm_relaxed.wasm", True),
           ("sllm_simd128_compat.wasm", False)]


def module_backend(filename: str, relaxed: bool) -> WasmSimdBackend:
    """A fresh backend running only `filename` (skips the test where the runtime refuses
    the module: relaxed SIMD under wasmer, for one)."""
    cls = type(f"Only_{filename}", (WasmSimdBackend,),
               {"modules": ((filename, relaxed, "simd128"),), "_probed": {}})
    try:
        return cls()
    except RuntimeUnavailable as e:
        pytest.skip(f"{filename}: {e}")
