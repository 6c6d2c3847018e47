"""Shared fixtures: the backends under test, small configs, and installing a fake plugin."""
import os
import signal
import tempfile
import textwrap

import numpy as np
import pytest

import sllm
from sllm import backends

# A shell without job control starts background commands (`make test &`) with SIGINT ignored, and
# an ignored signal stays ignored across exec: the tests that send SIGINT to a child would see it
# ignored. A handled signal resets to the default on exec, so give this process a handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
    """Plugin verdicts (sllm/backends/isolation.py) cached for this session only: the
    tests' throwaway plugins never reach the user's cache."""
    os.environ["SLLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="sllm-test-cache-")


def _available():
    return backends.available()


@pytest.fixture(params=_available())
def backend_name(request):
    """Each available backend by name."""
    return request.param


@pytest.fixture(autouse=True)
def _llama_cases_need_the_llama_kernels(request):
    """Skip a test's llama case (parameter arch="llama") on a backend without the llama
    kernels (a GPT-2-only plugin), as `sllm check-backend` skips those cases."""
    spec = getattr(request.node, "callspec", None)
    params = spec.params if spec is not None else {}
    if params.get("arch") == "llama" and "backend_name" in params:
        if backends.get(params["backend_name"]).missing_llama_kernels():
            pytest.skip(f"{params['backend_name']} lacks the llama kernels (it runs GPT-2 only)")


@pytest.fixture
def tiny_config():
    """The gradient-check config: 2 layers, 2 heads, C=8, V=11."""
    return sllm.ModelConfig(vocab_size=11, embedding_dim=8, num_layers=2, num_heads=2,
                            ffn_hidden_dim=12, dropout=0.0, max_seq_len=8)


@pytest.fixture
def rng():
    """A seeded generator."""
    return np.random.default_rng(1234)


def install_plugin(tmp_path, monkeypatch, name, source):
    """Write module `name` and a dist-info whose entry point (group sllm) names it. Only the
    plugins a test installs load (SLLM_LOAD_PLUGINS), not those of the venv (the example
    plugin .ci/run installs), so what the test sees does not depend on the machine."""
    loaded = [n for n in os.environ.get("SLLM_LOAD_PLUGINS", "").split(",") if n]
    monkeypatch.setenv("SLLM_LOAD_PLUGINS", ",".join([*loaded, name]))
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    dist = tmp_path / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[sllm]\n{name} = {name}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
