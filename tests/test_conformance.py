"""The conformance checker itself: it passes the reference, and it catches wrong kernels
(a numerical slip, an in-place bug, a wrong dropout mask, a crash) by name and exit status."""
import math

import numpy as np
import pytest
from conftest import install_plugin
from typer.testing import CliRunner

from sllm import backends
from sllm.backends import conformance, reference
from sllm.backends.base import KERNELS, LLAMA_KERNELS, OPTIONAL_KERNELS, Backend
from sllm.cli import app


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.delenv("SLLM_BACKEND", raising=False)
    monkeypatch.delenv("SLLM_LOAD_PLUGINS", raising=False)
    backends.reset()
    yield
    backends.reset()


class Sloppy(Backend):
    """gelu_fwd off by 1e-3; gelu_bwd wrong only in place; a dropout mask off by one."""

    name = "sloppy"
    reference_kernels = frozenset(KERNELS) - {"gelu_fwd", "gelu_bwd", "dropout_fwd", "relu_fwd"}

    def gelu_fwd(self, out, inp):
        reference.gelu_fwd(out, inp)
        out += 1e-3

    def gelu_bwd(self, dinp, dout, inp):
        dinp.fill(0)  # clobbers dout when they alias
        tmp = np.empty_like(dinp)
        reference.gelu_bwd(tmp, dout, inp)
        dinp += tmp

    def dropout_fwd(self, out, inp, p, seed):
        reference.dropout_fwd(out, inp, p, seed + 1)

    def relu_fwd(self, out, inp):
        raise RuntimeError("kernel crashed")


def test_reference_passes_everything():
    report = conformance.run("numpy")
    assert report.passed and len(report.checks) > 200
    assert {c.kernel for c in report.checks} == set(KERNELS) | set(LLAMA_KERNELS) | set(
        OPTIONAL_KERNELS) | {"model", "generate"}
    assert not report.skipped


def test_a_gpt2_only_backend_skips_the_llama_cases():
    report = conformance.run(Sloppy(), ["attention_fwd", "rope_fwd", "residual_fwd"])
    assert report.passed  # Sloppy's attention and residual are the reference's
    assert {c.kernel for c in report.checks} == {"attention_fwd", "residual_fwd"}
    assert any(s.startswith("rope_fwd") for s in report.skipped)
    assert any("Hkv" in s for s in report.skipped)  # grouped-query attention shapes
    assert "skipped" in conformance.render(report)


def test_wrong_kernels_are_caught_by_name():
    report = conformance.run(Sloppy(), ["gelu", "dropout_fwd", "relu_fwd", "residual"])
    failed = {c.kernel for c in report.failures()}
    assert failed == {"gelu_fwd", "gelu_bwd", "dropout_fwd", "relu_fwd"}
    gelu_bwd = [c for c in report.checks if c.kernel == "gelu_bwd"]
    assert [c.passed for c in gelu_bwd] == [True] * 4 + [False]  # only in place fails
    assert "in_place=True" in gelu_bwd[-1].case
    crash = next(c for c in report.failures() if c.kernel == "relu_fwd")
    assert "RuntimeError: kernel crashed" in crash.output and math.isinf(crash.error)
    text = conformance.render(report)
    assert "gelu_fwd" in text and "FAIL" in text and "residual_fwd" in text


def test_whole_model_and_generation_checks_catch_a_wrong_kernel():
    class Biased(Backend):
        name = "biased"
        reference_kernels = frozenset(KERNELS) - {"layernorm_fwd"}

        def layernorm_fwd(self, out, mean, rstd, inp, weight, bias):
            reference.layernorm_fwd(out, mean, rstd, inp, weight, bias)
            out *= 1.001

    report = conformance.run(Biased(), ["model", "generate"])
    assert not report.passed
    assert {"logits", "decode logits"} <= {c.output for c in report.failures()}


def test_compare():
    assert conformance.compare("k", "", "o", [1.0, 2.0], [1.0, 2.0 + 1e-5]).passed
    assert not conformance.compare("k", "", "o", [1.0, 2.0], [1.0, 2.1]).passed
    assert not conformance.compare("k", "", "o", [np.nan], [1.0]).passed
    assert not conformance.compare("k", "", "o", [1.0], [1.0, 1.0]).passed
    assert conformance.compare("k", "", "o", 3.0, 3.0).passed  # scalars (a loss)


def test_select():
    assert conformance.select(["matmul"]) == ["matmul_fwd", "matmul_bwd", "matmul_q_fwd", "matmul_q_bwd"]
    assert conformance.select(None)[-2:] == ["model", "generate"]
    with pytest.raises(ValueError, match="no kernel matches 'nope'"):
        conformance.select(["nope"])


SLOPPY_PLUGIN = '''
import numpy as np
import sllm
from sllm.backends import reference
from sllm.backends.base import Backend, KERNELS

class Sloppy(Backend):
    name = "sloppy"
    reference_kernels = frozenset(KERNELS) - {"gelu_fwd"}
    def gelu_fwd(self, out, inp):
        reference.gelu_fwd(out, inp)
        out += 1e-3

@sllm.hookimpl
def register_backends(register):
    register(Sloppy)
'''


def test_cli_exit_status(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "sllm_sloppy_plugin", SLOPPY_PLUGIN)
    runner = CliRunner()
    bad = runner.invoke(app, ["check-backend", "sloppy", "-k", "gelu"])
    assert bad.exit_code == 1, bad.output
    assert "gelu_fwd" in bad.output and "FAIL" in bad.output and "failures:" in bad.output
    good = runner.invoke(app, ["check-backend", "numpy", "-k", "gelu", "--perf"])
    assert good.exit_code == 0, good.output
    assert "speedup" in good.output and "checks passed" in good.output
    unknown = runner.invoke(app, ["check-backend", "no-such"])
    assert unknown.exit_code == 1 and "not registered" in unknown.output
