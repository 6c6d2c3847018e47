"""sllm.quant: ggml's exact block bytes (gguf-py is the oracle), round-trip error bounds,
padding and the refusals."""
import numpy as np
import pytest

from sllm import quant
from sllm.quant import QK, QuantizationError, dequantize, quantize

gguf_quants = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType  # noqa: E402 - after pytest.importorskip

GGML = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0,
        "q4_1": GGMLQuantizationType.Q4_1}
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}


def _gguf(x: np.ndarray, qtype: str) -> np.ndarray:
    """gguf-py's reference bytes (it warns on the subnormal-scale rows; we check its output)."""
    with np.errstate(all="ignore"):
        return gguf_quants.quantize(x, GGML[qtype])


def _adversarial_rows() -> np.ndarray:
    """Rows of 64 that stress the rounding and sign rules of each format."""
    r = np.random.default_rng(7)
    rows = [np.zeros(64),                                     # all zeros: d = 0
            np.r_[np.full(63, 0.01), 3e4],                    # one huge value
            -np.abs(r.normal(size=64)),                       # negative only
            np.abs(r.normal(size=64)),                        # positive only
            np.tile([0.0, -0.0], 32),                         # +-0
            r.normal(size=64) * 1e-30,                        # tiny (subnormal scales)
            np.full(64, 1e-38),                               # constant tiny
            np.full(64, -2.5),                                # constant: max == min
            np.r_[-8.0, np.full(31, 8.0), 8.0, np.full(31, -8.0)],  # +-max ties
            (np.arange(64) - 32) / 2.0,                       # exact .5 steps (round ties)
            np.r_[np.full(32, 1.0), np.full(32, -1.0)] * 127 / 254,  # halves in q8_0
            r.standard_cauchy(size=64)]                       # heavy tails
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("qtype", quant.QTYPES)
def test_block_sizes_match_ggml(qtype):
    assert quant.block_dtype(qtype).itemsize == BLOCK_BYTES[qtype]
    assert quant.bytes_per_row(qtype, 96) == 3 * BLOCK_BYTES[qtype]
    assert gguf_quants.GGML_QUANT_SIZES[GGML[qtype]] == (QK, BLOCK_BYTES[qtype])


@pytest.mark.parametrize("qtype", quant.QTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e-3, 100.0])
def test_bytes_equal_gguf_on_random_rows(qtype, scale):
    x = (np.random.default_rng(1).normal(size=(37, 256)) * scale).astype(np.float32)
    ours = quantize(x, qtype)
    assert ours.dtype == np.uint8 and ours.shape == (37, 8 * BLOCK_BYTES[qtype])
    np.testing.assert_array_equal(ours, _gguf(x, qtype))


@pytest.mark.parametrize("qtype", quant.QTYPES)
def test_bytes_equal_gguf_on_adversarial_rows(qtype):
    x = _adversarial_rows()
    ours = quantize(x, qtype)
    ref = _gguf(x, qtype)
    for i in range(len(x)):
        np.testing.assert_array_equal(ours[i], ref[i], err_msg=f"row {i}")


@pytest.mark.parametrize("qtype", quant.QTYPES)
def test_dequantize_equals_gguf(qtype):
    x = np.concatenate([_adversarial_rows(),
                        np.random.default_rng(2).normal(size=(5, 64)).astype(np.float32)])
    data = quantize(x, qtype)
    np.testing.assert_array_equal(dequantize(data, qtype, 64),
                                  gguf_quants.dequantize(data, GGML[qtype]))


@pytest.mark.parametrize("qtype,steps", [("q8_0", 127), ("q4_0", 8), ("q4_1", 15)])
def test_round_trip_error_bound(qtype, steps):
    """Each element is within half a step (plus the float16 rounding of the scales)."""
    x = np.random.default_rng(3).normal(size=(64, 128)).astype(np.float32)
    y = dequantize(quantize(x, qtype), qtype, 128)
    blocks = x.reshape(-1, QK)
    span = (np.abs(blocks).max(1) if qtype != "q4_1" else np.ptp(blocks, axis=1))
    step = span / steps
    err = np.abs(y - x).reshape(-1, QK).max(1)
    # q4_0 has 8 steps on the side of the largest magnitude but its other side is
    # clipped at +7, so its worst case is one full step there.
    bound = step * (1.0 if qtype == "q4_0" else 0.5) + np.abs(blocks).max(1) * 2e-3
    assert (err <= bound).all()
    rel = np.linalg.norm(y - x) / np.linalg.norm(x)
    assert rel < {"q8_0": 0.01, "q4_0": 0.12, "q4_1": 0.1}[qtype]


@pytest.mark.parametrize("qtype", quant.QTYPES)
def test_k_not_multiple_of_32_is_zero_padded(qtype):
    x = np.random.default_rng(4).normal(size=(3, 45)).astype(np.float32)
    data = quantize(x, qtype)
    assert data.shape == (3, 2 * BLOCK_BYTES[qtype])
    padded = np.concatenate([x, np.zeros((3, 19), np.float32)], axis=1)
    np.testing.assert_array_equal(data, quantize(padded, qtype))
    y = dequantize(data, qtype, 45)
    assert y.shape == (3, 45)
    np.testing.assert_array_equal(y, dequantize(data, qtype, 64)[:, :45])


@pytest.mark.parametrize("qtype", quant.QTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(qtype, bad):
    x = np.ones((2, 64), np.float32)
    x[1, 40] = bad
    with pytest.raises(QuantizationError, match=r"non-finite value .* row 1, column 40"):
        quantize(x, qtype)


@pytest.mark.parametrize("qtype,value", [("q8_0", 1e10), ("q4_0", 1e6), ("q4_1", -1e5)])
def test_scale_beyond_float16_is_refused(qtype, value):
    x = np.ones((1, 64), np.float32)
    x[0, 33] = value
    with pytest.raises(QuantizationError, match="block 1 of row 0.*float16"):
        quantize(x, qtype)


def test_bad_arguments_are_named():
    with pytest.raises(QuantizationError, match="'q3_k'"):
        quantize(np.ones((1, 32)), "q3_k")
    with pytest.raises(QuantizationError, match="shape"):
        quantize(np.ones((2, 2, 32)), "q8_0")
    with pytest.raises(QuantizationError, match="take 34 bytes, got 18"):
        dequantize(np.zeros((1, 18), np.uint8), "q8_0", 32)
    with pytest.raises(QuantizationError, match="positive"):
        quantize(np.ones((1, 0)), "q8_0")


def test_one_dimensional_input_is_one_row():
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    np.testing.assert_array_equal(quantize(x, "q8_0"), quantize(x[None], "q8_0"))


def test_unpack_q_gives_the_integers_of_each_format():
    x = np.random.default_rng(5).normal(size=(2, 64)).astype(np.float32)
    for qtype in quant.QTYPES:
        q, d, m = quant.unpack_q(quantize(x, qtype), qtype, 64)
        y = q.astype(np.float32) * d[..., None] + (0 if m is None else m[..., None])
        np.testing.assert_array_equal(y.reshape(2, 64), dequantize(quantize(x, qtype), qtype, 64))
    q, _, _ = quant.unpack_q(quantize(x, "q4_0"), "q4_0", 64)
    assert q.min() >= -8 and q.max() <= 7
