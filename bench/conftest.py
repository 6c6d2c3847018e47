"""pytest-benchmark suites over every available backend, grouped by roadmap phase.

phase 0: the numpy model; phase 1: wasm (vs numpy); phase 2: wasm-simd (vs wasm);
native: cpp. Run with `make bench` (writes bench/results/*.json and a markdown summary).
"""
import pytest

import sllm

PHASES = {"numpy": "phase 0", "wasm": "phase 1", "wasm-simd": "phase 2", "cpp": "native"}
CONFIGS = {"seed-baseline": (16, 64), "small-model": (16, 128), "medium-model": (16, 128)}


def pytest_generate_tests(metafunc):
    if "backend_name" in metafunc.fixturenames:
        known = [r["name"] for r in sllm.backends.info()]
        params = [pytest.param(n, marks=() if n in sllm.backends.available() else
                               pytest.mark.skip(reason=f"{n} unavailable"))
                  for n in known]
        metafunc.parametrize("backend_name", params)
    if "config_name" in metafunc.fixturenames:
        metafunc.parametrize("config_name", list(CONFIGS))
