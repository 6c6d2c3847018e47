"""The activations' q8_0 quantization inside every wasm module's matmul_q_fwd (SIMD128 for
whole blocks, the scalar loop for a partial one) gives the scalar module's codes bit for
bit, ties (half away from zero), infinite, NaN and all-zero blocks included, and the
reference's wherever no NaN is quantized (a NaN: the modules skip it in the block's
maximum and code it 0, as ggml does; numpy's maximum is NaN). One block a row, so an equal
output means equal codes and scales."""
from __future__ import annotations

import numpy as np
import pytest
from wasm_modules import MODULES, module_backend

from sllm import quant
from sllm.backends import reference


def _awkward_rows(K: int) -> np.ndarray:
    """Rows of K activations: exact ties (amax 127 makes the scale 1), random, infinite,
    NaN, all zero, tiny (subnormal scale)."""
    rng = np.random.default_rng(2)
    ties = np.arange(K, dtype=np.float32) - K / 2 + 0.5
    ties[0] = 127.0
    rows = [ties, -ties, rng.standard_normal(K) * 10, rng.standard_normal(K)]
    for special in (np.inf, -np.inf, np.nan):
        r = rng.standard_normal(K)
        r[K // 3] = special
        rows.append(r)
    rows += [np.zeros(K), rng.standard_normal(K) * 1e-6]
    return np.array(rows, np.float32)


@pytest.mark.parametrize("module,relaxed", MODULES, ids=[m[0] for m in MODULES])
@pytest.mark.parametrize("K", [32, 17])
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_activation_codes_equal_scalar_module_and_reference(module, relaxed, K, qtype):
    x = _awkward_rows(K)
    wq = quant.quantize(np.random.default_rng(3).standard_normal((6, K)).astype(np.float32), qtype)
    out = {m: np.zeros((len(x), 6), np.float32) for m in (module, "scalar", "reference")}
    with np.errstate(all="ignore"):
        for name, filename, simd in ((module, module, relaxed), ("scalar", "sllm_scalar.wasm", False)):
            be = module_backend(filename, simd)
            be.matmul_q_fwd(out[name], x, be.pack_q(be.from_numpy(wq, np.uint8), qtype), None, qtype)
        reference.matmul_q_fwd(out["reference"], x, wq, None, qtype)
    assert np.array_equal(out[module].view(np.uint32), out["scalar"].view(np.uint32))
    no_nan = ~np.isnan(x).any(axis=1)
    np.testing.assert_array_equal(np.isnan(out[module][no_nan]), np.isnan(out["reference"][no_nan]))
    finite = no_nan[:, None] & ~np.isnan(out["reference"])
    assert np.array_equal(out[module][finite].view(np.uint32), out["reference"][finite].view(np.uint32))

