"""The llama family's fused decode block (llama_decode_block, llama_decode_block_batch):
cpp's one-call block equals sllm/llama.py's kernel-by-kernel line bit for bit (f32 and every
quantized type, grouped-query attention, a continuous-batching step too), the contract's
default is that line, and the binding refuses bad arguments by name. Agreement with the
reference on awkward shapes is in the conformance suite (tests/test_kernels.py)."""
import numpy as np
import pytest

import sllm
from sllm import backends
from sllm.backends import reference
from sllm.backends.base import Backend, llama_decode_block_workspace

CFG = dict(vocab_size=53, embedding_dim=48, num_layers=2, num_heads=6, num_kv_heads=2,
           ffn_hidden_dim=72, dropout=0.1, max_seq_len=24, architecture="llama")
needs_cpp = pytest.mark.skipif("cpp" not in backends.available(), reason="cpp not built")


def _model(backend, qtype=None, tie=False):
    model = sllm.SLLM(sllm.ModelConfig(**CFG, tie_embeddings=tie), backend=backend, seed=7)
    return (model.quantize(qtype) if qtype else model).eval()


def _decode_run(model):
    """Logits of a 6-token prefill, 8 single-token steps and 3 continuous-batching steps of
    two sequences; the caches; greedy ids."""
    tokens = np.random.default_rng(1).integers(0, CFG["vocab_size"], (2, 16))
    cache = model.new_cache(1)
    rows = [model.decode(tokens[:1, :6], cache)]
    rows += [model.decode(tokens[:1, t:t + 1], cache) for t in range(6, 14)]
    batch = model.new_cache(3)
    for b, slot in enumerate((2, 0)):
        model.decode(tokens[b:b + 1, :5 + b], batch.slot(slot))
    for t in range(3):  # slot 2 at position 5 + t, slot 0 at 6 + t
        rows.append(model.decode_batch(tokens[:, 8 + t], batch, [2, 0], [5 + t, 6 + t]))
    ids = model.generate([int(t) for t in tokens[0, :4]], 12, temperature=0)
    return np.concatenate(rows), np.concatenate([c.ravel() for c in cache.k + cache.v + batch.k + batch.v]), ids


@needs_cpp
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("qtype", [None, "q8_0", "q4_0", "q4_1"])
def test_fused_block_is_bit_identical_to_the_kernel_line(qtype, tie, monkeypatch):
    model = _model("cpp", qtype, tie)
    assert type(model.backend).llama_decode_block is not Backend.llama_decode_block
    calls = []
    for name in ("llama_decode_block", "llama_decode_block_batch"):
        own = getattr(model.backend, name)
        monkeypatch.setattr(model.backend, name,
                            lambda *a, _own=own, _n=name, **k: calls.append(_n) or _own(*a, **k))
    fused = _decode_run(model)
    assert {"llama_decode_block", "llama_decode_block_batch"} <= set(calls)
    # the unfused line: no layer fused, in the decode step's packed weights too
    no_blocks = [None] * CFG["num_layers"]
    monkeypatch.setattr(model, "_fused_blocks", lambda layers=None: no_blocks)
    monkeypatch.setattr(model, "_blocks", no_blocks)
    model._decode_packed = None
    calls.clear()
    unfused = _decode_run(model)
    assert not calls
    np.testing.assert_array_equal(fused[0], unfused[0])
    np.testing.assert_array_equal(fused[1], unfused[1])
    assert fused[2] == unfused[2]


def test_the_reference_block_is_the_kernel_line():
    """numpy's block (the reference's composition of its kernels) equals llama.py's line."""
    model = _model("numpy")
    rng = np.random.default_rng(3)
    B, Tn, C, F, pos = 2, 3, 48, 72, 4
    x = rng.standard_normal((B, Tn, C)).astype(np.float32)
    kc, vc = (rng.standard_normal((B, 2, 24, 8)).astype(np.float32) for _ in range(2))
    L = model._p_layers[0]
    params = tuple(getattr(L, n) for n in reference.LLAMA_DECODE_BLOCK_PARAMS)
    out = np.empty_like(x)
    work = np.empty(llama_decode_block_workspace(B, Tn, C, F), np.float32)
    k2, v2 = kc.copy(), vc.copy()
    model.backend.llama_decode_block(out, x, k2, v2, work, params, pos, 6, 2, F, 10000.0, 1e-5)
    # the same rows through llama.py's block on a cache at that position
    cache = model.new_cache(B)
    for i in range(2):
        cache.k[i][...], cache.v[i][...] = kc, vc
    cache.pos = pos
    acts = model._activations(B, Tn, False)
    acts.positions.reshape(B, Tn)[...] = np.arange(pos, pos + Tn)
    from sllm import llama
    line = llama._block(model, acts, 0, L, acts.layers[0], x, 0.0, cache, None)
    np.testing.assert_array_equal(out, line)
    np.testing.assert_array_equal(k2, cache.k[0])


def _args(qtype=None):
    rng = np.random.default_rng(0)
    B, Tn, H, Hkv, D, F, pos, maxT = 1, 2, 4, 2, 4, 11, 3, 8
    C, Ckv = H * D, Hkv * D

    def f(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    params = [1 + f(C), f(C, C + 2 * Ckv), f(C, C), 1 + f(C), f(C, F), f(C, F), f(F, C)]
    return [f(B, Tn, C), f(B, Tn, C), f(B, Hkv, maxT, D), f(B, Hkv, maxT, D),
            np.zeros(llama_decode_block_workspace(B, Tn, C, F), np.float32), params, pos,
            H, Hkv, F, 10000.0, 1e-5]


def _with(i, value):
    args = _args()
    args[i] = value
    return args


def _param(i, value):
    args = _args()
    args[5] = list(args[5])
    args[5][i] = value
    return args


@needs_cpp
@pytest.mark.parametrize("args, message", [
    (_with(5, _args()[5][:6]), "params must hold the llama block's 7 tensors"),
    (_with(8, 3), "n_kv_head must be > 0 and divide n_head"),
    (_with(9, 12), "gate_w must be \\(16, 12\\)"),
    (_with(10, 0.0), "theta must be a finite number > 0"),
    (_with(11, float("nan")), "eps must be a finite number >= 0"),
    (_with(4, np.zeros(10, np.float32)), "llama_decode_block_workspace"),
    (_with(6, 7), "pos \\+ new positions exceed the cache length"),
    (_param(2, np.zeros((16, 15), np.float32)), "o_w must be \\(16, 16\\)"),
    (_param(0, np.zeros(15, np.float32)), "ln1_w"),
])
def test_cpp_binding_refuses_bad_arguments_by_name(args, message):
    from sllm import _cpp
    with pytest.raises(ValueError, match=message):
        _cpp.llama_decode_block(*args)


@needs_cpp
def test_cpp_binding_refuses_an_odd_head_dim():
    from sllm import _cpp
    rng = np.random.default_rng(0)
    C, F = 6, 5  # H = 2: D = 3
    x = rng.standard_normal((1, 1, C)).astype(np.float32)
    params = [np.ones(C, np.float32), np.zeros((C, 3 * C), np.float32),
              np.zeros((C, C), np.float32), np.ones(C, np.float32),
              np.zeros((C, F), np.float32), np.zeros((C, F), np.float32),
              np.zeros((F, C), np.float32)]
    kc = np.zeros((1, 2, 4, 3), np.float32)
    with pytest.raises(ValueError, match="head dim C / n_head must be even"):
        _cpp.llama_decode_block(x.copy(), x, kc, kc.copy(), np.zeros(200, np.float32), params,
                                0, 2, 2, F, 10000.0, 1e-5)


def test_declared_signatures_agree():
    """Backend's declaration, the reference and (when built) cpp take the same arguments."""
    import inspect
    for name in ("llama_decode_block", "llama_decode_block_batch"):
        declared = list(inspect.signature(getattr(Backend, name)).parameters)[1:]
        assert list(inspect.signature(getattr(reference, name)).parameters) == declared
        if "cpp" in backends.available():
            from sllm import _cpp
            doc = getattr(_cpp, name).__doc__.splitlines()[0]
            assert all(f"{p}:" in doc or f"{p}=" in doc or f"{p})" in doc for p in declared), doc
