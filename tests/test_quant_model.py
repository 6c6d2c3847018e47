"""Quantized models: model.quantize, the reference matmul_q_fwd, inference on quantized
weights, the binary format's q8_0/q4_0/q4_1 tensors (round trips, validation, fuzzing),
and the `sllm quantize` / `sllm info` / `sllm eval` commands."""
import json
import os
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st
from test_serialize import _sections, _table_with, fuzz, read_model_file_bytes
from typer.testing import CliRunner

import sllm
from sllm import FormatError, quant
from sllm.backends import reference
from sllm.cli import app
from sllm.quant import QuantizationError

CFG = sllm.ModelConfig(vocab_size=37, embedding_dim=48, num_layers=2, num_heads=2,
                       ffn_hidden_dim=64, max_seq_len=16, dropout=0.0)
TIED = sllm.ModelConfig(vocab_size=29, embedding_dim=64, num_layers=1, num_heads=4,
                        ffn_hidden_dim=96, max_seq_len=16, dropout=0.0, tie_embeddings=True)
X = np.array([[1, 2, 3, 28, 4, 5], [0, 5, 5, 9, 9, 9]])
REL_TOL = {"q8_0": 0.03, "q4_0": 0.3, "q4_1": 0.25}  # logits vs f32, relative L2


def _model(cfg=CFG, seed=3):
    m = sllm.SLLM(cfg, backend="numpy", seed=seed).eval()
    letters = "".join(chr(97 + i) for i in range(cfg.vocab_size))
    m.tokenizer = sllm.tokenizer.CharTokenizer.train(letters).to_dict()
    return m


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---- the reference kernel -------------------------------------------------------------------
@pytest.mark.parametrize("qtype", quant.QTYPES)
@pytest.mark.parametrize("N,K,OC", [(1, 32, 1), (3, 45, 7), (5, 96, 33), (2, 8, 3)])
def test_reference_matmul_q_matches_its_definition(qtype, N, K, OC):
    """Against a float64 loop over blocks of the dequantized weights and activations."""
    r = np.random.default_rng(N * K + OC)
    x = r.normal(size=(N, K)).astype(np.float32)
    w = r.normal(size=(OC, K)).astype(np.float32)
    b = r.normal(size=OC).astype(np.float32)
    wq = quant.quantize(w, qtype)
    out = np.empty((N, OC), np.float32)
    reference.matmul_q_fwd(out, x, wq, b, qtype)
    qx, dx = quant.quantize_q8_0_activations(x)
    xd = (qx.astype(np.float64) * dx[..., None]).reshape(N, -1)[:, :K]
    wd = quant.dequantize(wq, qtype, K).astype(np.float64)
    np.testing.assert_allclose(out, xd @ wd.T + b, rtol=1e-5, atol=1e-5)
    # and close to the float product: activation rounding is within half a q8_0 step
    exact = x.astype(np.float64) @ wd.T + b
    assert np.abs(out - exact).max() <= 0.02 * np.abs(x).max() * np.abs(wd).sum(1).max() + 1e-6


def test_reference_matmul_q_refuses_wrong_row_bytes():
    wq = quant.quantize(np.ones((3, 64), np.float32), "q8_0")
    with pytest.raises(QuantizationError, match="take 34 bytes, got 68"):
        reference.matmul_q_fwd(np.empty((1, 3), np.float32), np.ones((1, 32), np.float32),
                               wq, None, "q8_0")


@pytest.mark.parametrize("qtype", quant.QTYPES)
def test_every_backend_matches_the_reference_kernel(backend_name, qtype):
    """Awkward shapes (K % 32 != 0, one row, OC of 1) on each backend vs the reference."""
    from sllm.backends import cases, conformance
    be = sllm.backends.get(backend_name)
    for i, shape in enumerate(cases.CASES["matmul_q_fwd"].shapes):
        if shape["qtype"] == qtype:
            for check in conformance.check_kernel(be, "matmul_q_fwd", i):
                assert check.passed, check


@pytest.mark.parametrize("module", ["sllm_simd128.wasm", "sllm_simd128_compat.wasm"])
def test_wasm_simd128_modules_without_relaxed_simd(module):
    """The plain SIMD128 module (browsers without relaxed SIMD) runs the extmul path; the
    compat module (wasmer 1.x) widens with extend + mul instead: both run every case of the
    quantized matmul and its backward."""
    from sllm.backends import cases, conformance
    from sllm.backends.wasm import WasmSimdBackend
    if "wasm-simd" not in sllm.backends.available():
        pytest.skip("wasm-simd is not available here")

    class Simd128Only(WasmSimdBackend):
        modules = ((module, False, "simd128"),)
        _probed = {}

    be = Simd128Only()
    assert be.capabilities["module"] == module
    for kernel in ("matmul_q_fwd", "matmul_q_bwd"):
        for i in range(len(cases.CASES[kernel].shapes)):
            for check in conformance.check_kernel(be, kernel, i):
                assert check.passed, check


@pytest.mark.parametrize("qtype", quant.QTYPES)
def test_quantized_model_greedy_tokens_agree_on_every_backend(tmp_path, qtype):
    cfg = sllm.ModelConfig(vocab_size=61, embedding_dim=72, num_layers=2, num_heads=3,
                           ffn_hidden_dim=160, max_seq_len=32, dropout=0.0)
    _model(cfg, seed=11).quantize(qtype).save(tmp_path / "q.sllm")
    runs = {}
    for name in sllm.backends.available():
        m = sllm.load(tmp_path / "q.sllm", backend=name)
        runs[name] = m.generate([3, 1, 4, 1, 5], 20, temperature=0.0)
    assert len({tuple(r) for r in runs.values()}) == 1, runs


# ---- model.quantize -------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [CFG, TIED], ids=["untied", "tied"])
@pytest.mark.parametrize("qtype", quant.QTYPES)
def test_quantized_model_tracks_float(cfg, qtype):
    m = _model(cfg)
    ref_logits, ref_loss = m.forward(X), m.loss(X, X)
    m.quantize(qtype)
    assert m.qtype == qtype
    assert set(m.quantized_weights()) == set(quant.matmul_weight_names(cfg)) | {"wte"}
    assert _rel(m.forward(X), ref_logits) < REL_TOL[qtype]
    assert abs(m.loss(X, X) - ref_loss) < 0.1 * ref_loss
    out = m.generate([1, 2, 3], 8, temperature=0.0)
    assert len(out) == 11 and out[:3] == [1, 2, 3]


def test_quantize_keeps_float_tensors_and_frees_the_matrices():
    m = _model()
    before = m.flat_params.nbytes
    wpe = m.parameters()["wpe"].copy()
    m.quantize("q4_0")
    params = m.parameters()
    assert "h.0.mlp.c_fc.weight" not in params and "lm_head.weight" not in params
    np.testing.assert_array_equal(params["wpe"], wpe)
    q = m.quantized_weights()["h.0.mlp.c_fc.weight"]
    assert q.shape == (64, 48) and q.data.shape == (64, 2 * 18) and q.data.dtype == np.uint8
    stored = m.flat_params.nbytes + sum(q.nbytes for q in m.quantized_weights().values())
    assert stored < before / 2
    assert m.num_parameters() == sllm.SLLM(CFG, backend="numpy").num_parameters()


def test_quantized_model_is_inference_only_and_quantizes_once():
    m = _model().quantize("q8_0")
    with pytest.raises(RuntimeError, match="quantized .*inference only"):
        m.forward_backward(X, X)
    with pytest.raises(ValueError, match="already quantized \\(q8_0\\)"):
        m.quantize("q4_0")
    with pytest.raises(ValueError, match="JSON"):
        m.save_json("unused.json")


def test_quantize_errors_name_the_type_and_tensor():
    with pytest.raises(QuantizationError, match="'q2'"):
        _model().quantize("q2")
    m = _model()
    m.parameters()["h.1.attn.c_proj.weight"][3, 5] = np.nan
    with pytest.raises(QuantizationError, match="'h.1.attn.c_proj.weight'.*non-finite"):
        m.quantize("q8_0")


@pytest.mark.parametrize("qtype", quant.QTYPES)
def test_quantized_generation_matches_dequantized_reference_model(qtype):
    """A quantized model computes what its dequantized weights with q8_0 activations give:
    greedy tokens equal those of a float model holding the dequantized weights (up to
    activation rounding, which rarely flips a near-tie; we check the logits closely)."""
    m = _model()
    m.quantize(qtype)
    f = _model()
    for name, q in m.quantized_weights().items():
        w = q.dequantize()
        f.parameters()[name][...] = w if name == "wte" else w.T
    assert _rel(m.forward(X), f.forward(X)) < 0.02


# ---- the file format ------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [CFG, TIED], ids=["untied", "tied"])
@pytest.mark.parametrize("qtype", quant.QTYPES)
def test_save_load_round_trip(cfg, qtype, tmp_path, backend_name):
    m = _model(cfg).quantize(qtype)
    path = tmp_path / "q.sllm"
    m.save(path)
    back = sllm.load(path, backend=backend_name)
    assert back.qtype == qtype and back.tokenizer == m.tokenizer
    for name, q in m.quantized_weights().items():
        np.testing.assert_array_equal(back.quantized_weights()[name].data, q.data)
    np.testing.assert_allclose(back.forward(X), m.forward(X), rtol=1e-4, atol=1e-4)
    mf = sllm.serialize.read_model_file(path)
    assert mf.dtype == f"f32/{qtype}"


def test_f16_and_quantized_together(tmp_path):
    m = _model().quantize("q4_1")
    m.save(tmp_path / "q.sllm", dtype="f16")
    back = sllm.load(tmp_path / "q.sllm")
    assert sllm.serialize.read_model_file(tmp_path / "q.sllm").dtype == "f16/q4_1"
    np.testing.assert_allclose(back.forward(X), m.forward(X), rtol=0.02, atol=0.02)


def test_sizes_shrink(tmp_path):
    cfg = sllm.ModelConfig(vocab_size=256, embedding_dim=128, num_layers=2, num_heads=4,
                           ffn_hidden_dim=512, max_seq_len=16)
    sllm.SLLM(cfg, backend="numpy").save(tmp_path / "f.sllm")
    f32 = os.path.getsize(tmp_path / "f.sllm")
    ratios = {}
    for qtype in quant.QTYPES:
        sllm.SLLM(cfg, backend="numpy").quantize(qtype).save(tmp_path / f"{qtype}.sllm")
        ratios[qtype] = f32 / os.path.getsize(tmp_path / f"{qtype}.sllm")
    assert ratios["q4_0"] > ratios["q4_1"] > ratios["q8_0"] > 2.5


@pytest.fixture(scope="module")
def qbytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "q.sllm"
    _model().quantize("q4_0").save(path)
    return path.read_bytes()


def _entry(entries, name):
    return next(e for e in entries if e["name"] == name.encode())


def _bad(data, tmp_path, match):
    path = tmp_path / "bad.sllm"
    path.write_bytes(data)
    with pytest.raises(FormatError, match=match):
        sllm.load(path)


@pytest.mark.parametrize("change,match", [
    (dict(nbytes=64 * 2 * 18 - 18), "64 rows of K=48 in q4_0 are 64 x 2 blocks of 18 bytes"),
    (dict(dtype=2), "q8_0 are 64 x 2 blocks of 34 bytes = 4352 bytes, the table says 2304"),
    (dict(shape=[64, 48, 1]), "2 non-zero dimensions"),
    (dict(shape=[48, 64], nbytes=48 * 2 * 18), "shape \\(48, 64\\).*needs \\(64, 48\\)"),
    (dict(shape=[64, 0], nbytes=0), "2 non-zero dimensions"),
])
def test_bad_quantized_entries(qbytes, tmp_path, change, match):
    def mutate(entries):
        _entry(entries, "h.0.mlp.c_fc.weight").update(change)
    _bad(_table_with(qbytes, mutate), tmp_path, match)


def test_only_matmul_weights_may_be_quantized(qbytes, tmp_path):
    def mutate(entries):  # a (16, 48) wpe relabelled as q8_0 rows of the right byte size
        _entry(entries, "wpe").update(dtype=2, nbytes=16 * 2 * 34)
        e = _entry(entries, "wpe")
        e["nbytes"] = 16 * 2 * 34
    data = _table_with(qbytes, mutate)
    with pytest.raises(FormatError):
        read_model_file_bytes(data)


def test_fuzz_quantized_file_only_format_error(qbytes, tmp_path):
    """Truncated, flipped and forged-table quantized files: each raises FormatError or loads
    the original model."""
    boundaries = [p for s in _sections(qbytes) for p in (s["offset"], s["offset"] + 16)]

    def mutate(blob: bytearray, data: Any) -> bytes | bytearray | None:
        action = data.draw(st.sampled_from(["truncate", "flip", "table"]))
        if action == "truncate":
            return blob[:data.draw(st.sampled_from(boundaries) | st.integers(0, len(blob)))]
        if action == "flip":
            for _ in range(data.draw(st.integers(1, 8))):
                blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
            return blob

        def forge(entries):
            e = entries[data.draw(st.integers(0, len(entries) - 1))]
            key = data.draw(st.sampled_from(["dtype", "nbytes", "shape"]))
            if key == "shape":
                e["shape"] = data.draw(st.lists(st.integers(0, 300), min_size=1, max_size=3))
            elif key == "dtype":
                e["dtype"] = data.draw(st.integers(0, 6))
            else:
                e["nbytes"] = data.draw(st.integers(0, 1 << 20))
        try:
            return _table_with(bytes(blob), forge)
        except struct.error:
            return None  # the forged value does not fit its field

    original = sllm.load(_write(tmp_path / "q.sllm", qbytes), backend="numpy")
    outcomes = fuzz(qbytes, mutate, tmp_path / "m.sllm", original)
    assert outcomes["format error"] > outcomes["loaded"] > 0, outcomes  # both paths ran


def _write(path, data):
    path.write_bytes(data)
    return path


# ---- CLI ------------------------------------------------------------------------------------
def test_cli_quantize_info_eval(tmp_path):
    text = "abcdefghij" * 40
    m = _model()
    m.tokenizer = sllm.tokenizer.CharTokenizer.train(text, byte_fallback=False).to_dict()
    m.save(tmp_path / "f.sllm")
    (tmp_path / "text.txt").write_text(text)
    run = CliRunner()
    r = run.invoke(app, ["quantize", str(tmp_path / "f.sllm"), "--type", "q4_0",
                         "-o", str(tmp_path / "q.sllm")])
    assert r.exit_code == 0, r.output
    assert "x smaller" in r.output
    r = run.invoke(app, ["info", str(tmp_path / "q.sllm")])
    assert r.exit_code == 0, r.output
    assert "h.0.mlp.c_fc.weight" in r.output and "q4_0" in r.output and "saved" in r.output
    r = run.invoke(app, ["quantize", str(tmp_path / "q.sllm"), "--type", "q8_0",
                         "-o", str(tmp_path / "qq.sllm")])
    assert r.exit_code == 1 and "already quantized" in r.output
    results = {}
    for name in ("f", "q"):
        r = run.invoke(app, ["eval", str(tmp_path / f"{name}.sllm"), "--corpus",
                             str(tmp_path / "text.txt"), "--json", str(tmp_path / f"{name}.json")])
        assert r.exit_code == 0, r.output
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["f"]["tokens"] == len(text) - 1 and results["q"]["dtype"] == "q4_0"
    assert abs(results["q"]["loss"] - results["f"]["loss"]) < 0.1 * results["f"]["loss"]
    assert results["f"]["ppl"] == pytest.approx(np.exp(results["f"]["loss"]))
    r = run.invoke(app, ["eval", str(tmp_path / "q.sllm")])
    assert r.exit_code == 1 and "--corpus" in r.output


def test_eval_matches_model_loss():
    from sllm.evaluate import evaluate
    m = _model()
    ids = np.arange(40) % CFG.vocab_size
    r = evaluate(m, ids, batch_size=2)
    assert r["tokens"] == 39
    pieces = [(ids[s:min(s + 16, 39)], ids[s + 1:s + 17]) for s in range(0, 39, 16)]
    total = sum(m.loss(x[None], y[None]) * len(y) for x, y in pieces)
    assert r["loss"] == pytest.approx(total / 39, rel=1e-5)


def test_keep_embeddings_leaves_wte_float():
    m = _model().quantize("q8_0", embeddings=False)
    assert "wte" in m.parameters() and "wte" not in m.quantized_weights()
    assert "lm_head.weight" in m.quantized_weights()
