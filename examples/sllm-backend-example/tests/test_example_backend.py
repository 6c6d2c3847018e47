"""The example plugin, as installed: sllm finds it and its kernels pass `sllm check-backend`."""
import os
import shutil
import subprocess
import sys

import numpy as np

from sllm import backends


def _sllm(*args: str, **env: str) -> subprocess.CompletedProcess:
    exe = shutil.which("sllm") or os.path.join(os.path.dirname(sys.executable), "sllm")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


def test_registered_through_its_entry_point():
    backends.reset()
    rows = {r["name"]: r for r in backends.info()}
    assert rows["example"]["available"], rows["example"]["reason"]
    assert rows["example"]["plugin"] == "sllm-backend-example"
    assert "gelu_fwd" not in rows["example"]["reference_kernels"]


def test_check_backend_passes():
    done = _sllm("check-backend", "example")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and "checks passed" in done.stdout


def test_load_plugins_takes_the_entry_point_name():
    assert "example" in _sllm("backends", SLLM_LOAD_PLUGINS="sllm-backend-example").stdout
    assert "example" not in _sllm("backends", SLLM_LOAD_PLUGINS="example").stdout


def test_gelu_in_place():
    be = backends.get("example")
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    y = x.copy()
    be.gelu_fwd(y, y)
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
