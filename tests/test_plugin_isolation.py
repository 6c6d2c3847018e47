"""Plugins cannot take the product down (issue 29, items 6 and 8 of "Why"): a kernel
calling sys.exit(0) made `check-backend` print nothing and exit 0 and made train/eval/
generate exit 0 with nothing done; a raising kernel gave a RuntimeError traceback. A
plugin's kernels now raise BackendError naming the plugin and the kernel."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import install_plugin
from typer.testing import CliRunner

import sllm
from sllm import backends
from sllm.cli import app
from sllm.errors import BackendError

PLUGIN = '''
import sys
import sllm
from sllm.backends.base import Backend, KERNELS

class Exiting(Backend):
    """Every kernel from the reference, except layernorm_fwd, which ends the process."""
    name = "exiting"
    priority = -1000
    reference_kernels = frozenset(KERNELS) - {"layernorm_fwd"}

    def layernorm_fwd(self, *args, **kwargs):
        sys.exit(0)

class Raising(Backend):
    name = "raising"
    priority = -1000
    reference_kernels = frozenset(KERNELS) - {"layernorm_fwd"}

    def layernorm_fwd(self, *args, **kwargs):
        raise RuntimeError("kaboom")

@sllm.hookimpl
def register_backends(register):
    register(Exiting)
    register(Raising)
'''


@pytest.fixture(autouse=True)
def plugin(tmp_path, monkeypatch):
    monkeypatch.delenv("SLLM_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("SLLM_BACKEND", raising=False)
    install_plugin(tmp_path, monkeypatch, "sllm_exit_plugin", PLUGIN)
    backends.reset()
    yield
    backends.reset()


@pytest.mark.parametrize("name,why", [("exiting", r"sys\.exit\(0\)"), ("raising", "kaboom")])
def test_a_failing_kernel_is_a_backend_error_naming_plugin_and_kernel(name, why):
    cfg = sllm.ModelConfig(vocab_size=7, embedding_dim=4, num_heads=2, num_layers=1,
                           ffn_hidden_dim=4, max_seq_len=4)
    model = sllm.SLLM(cfg, backend=name).eval()
    with pytest.raises(BackendError, match=rf"plugin 'sllm_exit_plugin', kernel "
                                           rf"layernorm_fwd: .*{why}"):
        model.forward(np.array([[1, 2, 3]]))


def test_check_backend_fails_loudly_on_a_plugin_that_exits():
    result = CliRunner().invoke(app, ["check-backend", "exiting", "-k", "layernorm"])
    assert result.exit_code == 1, result.output
    assert "layernorm_fwd" in result.output and "sys.exit(0)" in result.output


def test_builtin_backends_are_not_wrapped():
    numpy_backend = backends.get("numpy")
    assert "layernorm_fwd" not in vars(numpy_backend)
