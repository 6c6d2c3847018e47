"""matmul_q_bwd, the optional kernel a LoRA adapter on a quantized base needs: the
contract's default (made of dequantize and matmul_fwd) agrees with the reference, slices
the columns so it never holds the whole float matrix, refuses a layout it cannot read, and
every native version checks its arguments where they enter."""
import numpy as np
import pytest

from sllm import backends, quant
from sllm.backends import conformance, reference
from sllm.backends.base import KERNELS, Backend


class DefaultOnly(Backend):
    """Every required kernel from the reference; matmul_q_bwd is the contract's default."""

    name = "default-only"
    reference_kernels = frozenset(KERNELS)

    def __init__(self):
        self.widths = []

    def matmul_fwd(self, out, inp, weight, bias, trans_w=False):
        self.widths.append(weight.shape[1])
        reference.matmul_fwd(out, inp, weight, bias, trans_w)


def test_the_default_agrees_with_the_reference_on_every_case():
    backend = DefaultOnly()
    assert backend.matmul_q_bwd.__func__ is Backend.matmul_q_bwd
    report = conformance.run(backend, ["matmul_q_bwd"])
    assert report.passed and len(report.checks) == 48


def test_the_default_dequantizes_a_bounded_slice_at_a_time():
    rng = np.random.default_rng(0)
    OC, K = 1001, 1100
    wq = quant.quantize(rng.standard_normal((OC, K)).astype(np.float32), "q4_0")
    dout = rng.standard_normal((3, OC)).astype(np.float32)
    backend = DefaultOnly()
    dinp, ref = np.full((3, K), np.nan, np.float32), np.zeros((3, K), np.float32)
    backend.matmul_q_bwd(dinp, dout, wq, "q4_0")
    np.testing.assert_allclose(dinp, dout @ quant.dequantize(wq, "q4_0", K), rtol=1e-5, atol=1e-4)
    assert sum(backend.widths) == K and len(backend.widths) == 2  # 1024 columns (4 MiB), then 76
    assert max(backend.widths) * OC <= quant.DEQUANT_CHUNK_FLOATS
    reference.matmul_q_bwd(ref, dout, wq, "q4_0")
    np.testing.assert_allclose(dinp, ref, rtol=1e-5, atol=1e-4)


def test_column_slices_cover_k_in_whole_blocks():
    wq = quant.quantize(np.ones((3, 75), np.float32), "q8_0")
    slices = list(quant.column_slices(wq, "q8_0", 75, budget=3 * 32))
    assert [(k0, k1) for k0, k1, _ in slices] == [(0, 32), (32, 64), (64, 75)]
    assert all(rows.shape == (3, 34) for *_, rows in slices)
    assert quant.chunk_columns(10 ** 6, 75) == 32  # at least one block column
    assert quant.chunk_columns(1, 75) == 96  # never past K's padded width


def test_the_default_refuses_rows_it_cannot_read():
    with pytest.raises(TypeError, match="matmul_q_bwd: the default reads ggml's rows"):
        DefaultOnly().matmul_q_bwd(np.zeros((1, 32), np.float32), np.zeros((1, 2), np.float32),
                                   object(), "q8_0")


@pytest.mark.skipif("cpp" not in backends.available(), reason="the cpp backend is not built here")
def test_cpp_checks_its_arguments():
    cpp = backends.get("cpp")
    wq = quant.quantize(np.ones((5, 40), np.float32), "q4_1")
    dinp, dout = np.zeros((2, 40), np.float32), np.ones((2, 5), np.float32)
    cpp.matmul_q_bwd(dinp, dout, cpp.pack_q(wq, "q4_1"), "q4_1")
    np.testing.assert_allclose(dinp, dout @ quant.dequantize(wq, "q4_1", 40), rtol=1e-6)
    with pytest.raises(ValueError, match="matmul_q_bwd: qtype must be"):
        cpp.matmul_q_bwd(dinp, dout, wq, "q5_0")
    with pytest.raises(ValueError, match="matmul_q_bwd: wq must be"):
        cpp.matmul_q_bwd(dinp, np.ones((2, 4), np.float32), wq, "q4_1")
    with pytest.raises(ValueError, match="matmul_q_bwd: dinp must be"):
        cpp.matmul_q_bwd(np.zeros((3, 40), np.float32), dout, wq, "q4_1")
