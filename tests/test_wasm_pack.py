"""The wasm modules' packed quantized rows (pack_q): in every module they give the results of
ggml's rows bit for bit (matmul_q_fwd, embed_q_fwd, matmul_q_bwd), unpack to ggml's bytes
exactly, are checked where they enter, and are what a quantized model holds."""
from __future__ import annotations

import numpy as np
import pytest
from wasm_modules import MODULES, module_backend

import sllm
from sllm import quant
from sllm.backends.wasm import PackedQ, WasmSimdBackend

QTYPES = ["q8_0", "q4_0", "q4_1"]
# float16 scales of every kind: subnormal, zero, negative, largest, infinite, NaN (quiet,
# signalling, with a payload)
HALVES = [0x0001, 0x03FF, 0x0400, 0x8000, 0x0000, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00,
          0x7C01, 0xFD55, 0x3C00, 0xB555]


@pytest.fixture(params=MODULES, ids=[m[0] for m in MODULES])
def module_be(request):
    """A backend running one module (skipped where the runtime refuses it)."""
    return module_backend(*request.param)


def _rows(rng: np.random.Generator, OC: int, K: int, qtype: str) -> np.ndarray:
    """OC quantized rows of K values, the first rows' scales (and offsets) of every kind."""
    wq = quant.quantize(rng.standard_normal((OC, K)).astype(np.float32), qtype)
    n = min(OC, len(HALVES))
    wq[:n, 0:2] = np.array(HALVES[:n], np.uint16).view(np.uint8).reshape(-1, 2)
    if qtype == "q4_1":
        wq[:n, 2:4] = np.array(HALVES[::-1][:n], np.uint16).view(np.uint8).reshape(-1, 2)
    return wq


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("N,K,OC", [(1, 32, 1), (1, 45, 7), (3, 96, 33), (2, 128, 5003),
                                    (17, 45, 16), (5, 64, 19)])
def test_packed_rows_give_ggml_rows_results_bit_for_bit(module_be, qtype, N, K, OC):
    be, rng = module_be, np.random.default_rng(N * K + OC)
    rows = be.from_numpy(_rows(rng, OC, K, qtype), np.uint8)
    packed = be.pack_q(rows, qtype)
    assert isinstance(packed, PackedQ) and packed.shape == rows.shape
    x, dout = (rng.standard_normal(s).astype(np.float32) for s in ((N, K), (N, OC)))
    bias = rng.standard_normal(OC).astype(np.float32)
    tokens = rng.integers(0, OC, (2, 3)).astype(np.int32)
    got = {}
    with np.errstate(all="ignore"):
        for name, wq in (("rows", rows), ("packed", packed)):
            y, emb, dx = (np.zeros(s, np.float32) for s in ((N, OC), (2, 3, K), (N, K)))
            be.matmul_q_fwd(y, x, wq, bias, qtype)
            be.embed_q_fwd(emb, tokens, wq, qtype)
            be.matmul_q_bwd(dx, dout, wq, qtype)
            got[name] = (y, emb, dx)
    for kernel, a, b in zip(("matmul_q_fwd", "embed_q_fwd", "matmul_q_bwd"), got["rows"],
                            got["packed"], strict=True):
        assert _same(a, b), kernel


@pytest.mark.parametrize("qtype", QTYPES)
def test_unpacking_gives_ggml_bytes_back(module_be, qtype):
    """Any bytes at all (NaN scales with payloads included) survive pack and unpack."""
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, (9, 3 * quant.bytes_per_row(qtype, 32)), dtype=np.uint8)
    raw[:, 0:2] = np.array(HALVES[:9], np.uint16).view(np.uint8).reshape(-1, 2)
    packed = module_be.pack_q(module_be.from_numpy(raw, np.uint8), qtype)
    back = module_be.unpack_q(packed, qtype)
    assert back.dtype == np.uint8 and np.array_equal(back, raw)
    module_be.free(packed)


def test_packed_rows_are_checked_where_they_enter():
    be = WasmSimdBackend()
    rows = be.from_numpy(quant.quantize(np.ones((5, 40), np.float32), "q4_0"), np.uint8)
    packed = be.pack_q(rows, "q4_0")
    out, x = np.zeros((1, 5), np.float32), np.ones((1, 40), np.float32)
    with pytest.raises(ValueError, match="packed as q4_0, used as 5 q4_1"):
        be.matmul_q_fwd(out, x, packed, None, "q4_1")
    with pytest.raises(ValueError, match="used as 6 q4_0 rows of K=40"):
        be.matmul_q_fwd(np.zeros((1, 6), np.float32), x, packed, None, "q4_0")
    with pytest.raises(ValueError, match="used as 5 q4_0 rows of K=70"):
        be.matmul_q_fwd(out, np.ones((1, 70), np.float32), packed, None, "q4_0")
    with pytest.raises(ValueError, match="pack_q: wq must be"):
        be.pack_q(np.zeros(36, np.uint8), "q4_0")
    with pytest.raises(ValueError, match="qtype must be one of"):
        be.pack_q(rows, "q5_0")
    with pytest.raises(ValueError, match="rows packed as q4_0, not q8_0"):
        be.unpack_q(packed, "q8_0")


@pytest.mark.parametrize("qtype", QTYPES)
def test_a_quantized_model_holds_packed_rows_and_saves_ggml_bytes(tmp_path, qtype):
    cfg = sllm.ModelConfig(vocab_size=70, embedding_dim=45, num_layers=1, num_heads=3,
                           ffn_hidden_dim=21, max_seq_len=16, tie_embeddings=True)
    model = sllm.SLLM(cfg, backend=WasmSimdBackend(), seed=3).quantize(qtype)
    ref = sllm.SLLM(cfg, backend="numpy", seed=3).quantize(qtype)
    for name, w in model.quantized_weights().items():
        assert isinstance(w.packed, PackedQ) and w.rows is None, name  # one copy, packed
        assert np.array_equal(w.data, ref.quantized_weights()[name].data), name
    model.save(tmp_path / "wasm.sllm")
    saved = sllm.load(tmp_path / "wasm.sllm", backend="numpy").quantized_weights()
    for name, w in ref.quantized_weights().items():
        assert np.array_equal(saved[name].data, w.data), name


@pytest.mark.parametrize("qtype", QTYPES)
def test_repacking_leaves_greedy_decoding_unchanged(module_be, qtype):
    """The same quantized model decoding from packed rows and from ggml's rows (a second
    instance of the module whose pack_q is skipped): the same tokens, the same logits."""
    cfg = sllm.ModelConfig(vocab_size=70, embedding_dim=45, num_layers=2, num_heads=3,
                           ffn_hidden_dim=21, max_seq_len=40, tie_embeddings=True)
    unpacked = type(module_be)()
    unpacked.pack_q = lambda wq, qtype: wq
    packed = sllm.SLLM(cfg, backend=module_be, seed=3).quantize(qtype).eval()
    rows = sllm.SLLM(cfg, backend=unpacked, seed=3).quantize(qtype).eval()
    assert isinstance(packed.quantized_weights()["wte"].packed, PackedQ)
    assert isinstance(rows.quantized_weights()["wte"].packed, np.ndarray)
    prompt = [5, 17, 60, 3]
    assert packed.generate(prompt, 30, temperature=0) == rows.generate(prompt, 30, temperature=0)
    assert np.array_equal(packed.forward([prompt]), rows.forward([prompt]))
