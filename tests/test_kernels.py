"""Every kernel of every available backend against the numpy reference, on awkward shapes:
sizes that are not multiples of the SIMD width, T = 1, one head, a large vocabulary."""
import numpy as np
import pytest

from sllm import backends
from sllm.backends import numpy_ref

OTHER = [n for n in backends.available() if n != "numpy"]
pytestmark = pytest.mark.skipif(not OTHER, reason="only the numpy reference is available")

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(params=OTHER or ["none"])
def be(request):
    """A non-reference backend instance."""
    return backends.get(request.param)


def _run(be, kernel, args, outputs, rtol=RTOL, atol=ATOL):
    """Run `kernel` on copies of args with the reference and with `be`; compare outputs."""
    ref = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    getattr(numpy_ref, kernel)(*ref)
    mine = [be.from_numpy(a, a.dtype) if isinstance(a, np.ndarray) else a for a in args]
    getattr(be, kernel)(*mine)
    for i in outputs:
        scale = max(1.0, float(np.abs(ref[i]).max()))
        np.testing.assert_allclose(mine[i], ref[i], rtol=rtol, atol=atol * scale,
                                   err_msg=f"{kernel}: output {i}")
    return mine, ref


def _f(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("B,T,V,C,pos", [(1, 1, 3, 5, 0), (2, 5, 13, 17, 3), (3, 9, 70, 33, 0)])
def test_encoder(be, rng, B, T, V, C, pos):
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    tokens[0, 0] = tokens[-1, -1]  # a repeated token accumulates twice
    wte, wpe = _f(rng, V, C), _f(rng, T + pos + 2, C)
    _run(be, "encoder_fwd", [_f(rng, B, T, C), tokens, wte, wpe, pos], [0])
    _run(be, "encoder_bwd", [_f(rng, V, C), _f(rng, T + pos + 2, C), _f(rng, B, T, C), tokens,
                             pos], [0, 1])


@pytest.mark.parametrize("N,C", [(1, 5), (7, 17), (37, 33), (64, 128)])
def test_layernorm(be, rng, N, C):
    x, w, b = _f(rng, N, C) * 3 + 1, _f(rng, C), _f(rng, C)
    _run(be, "layernorm_fwd", [_f(rng, N, C), _f(rng, N), _f(rng, N), x, w, b], [0, 1, 2])
    mean, rstd = x.mean(1), 1 / np.sqrt(x.var(1) + 1e-5)
    _run(be, "layernorm_bwd", [_f(rng, N, C), _f(rng, C), _f(rng, C), _f(rng, N, C), x, w,
                               mean.astype(np.float32), rstd.astype(np.float32)], [0, 1, 2])


@pytest.mark.parametrize("N,C,OC", [(1, 5, 3), (7, 17, 19), (37, 33, 70), (130, 128, 384),
                                    (20, 64, 5003)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("trans_w", [False, True])
def test_matmul(be, rng, N, C, OC, bias, trans_w):
    w = _f(rng, OC, C) if trans_w else _f(rng, C, OC)
    b = _f(rng, OC) if bias else None
    x = _f(rng, N, C)
    _run(be, "matmul_fwd", [_f(rng, N, OC), x, w, b, trans_w], [0])
    db = _f(rng, OC) if bias else None
    _run(be, "matmul_bwd", [_f(rng, N, C), _f(rng, *w.shape), db, _f(rng, N, OC), x, w,
                            trans_w], [0, 1] + ([2] if bias else []))


def _attention_both(be, rng, B, T, H, D):
    C = H * D
    qkv, out_ref = _f(rng, B, T, 3 * C), np.zeros((B, T, C), np.float32)
    saved_ref = np.zeros(numpy_ref.NumpyBackend().attention_saved_shape(B, T, H), np.float32)
    numpy_ref.attention_fwd(out_ref, saved_ref, qkv, H)
    out, saved = be.zeros((B, T, C)), be.zeros(be.attention_saved_shape(B, T, H))
    bqkv = be.from_numpy(qkv)
    be.attention_fwd(out, saved, bqkv, H)
    return qkv, out_ref, saved_ref, bqkv, out, saved


@pytest.mark.parametrize("B,T,H,D", [(1, 1, 1, 8), (2, 7, 3, 5), (2, 33, 2, 16), (1, 64, 4, 32)])
def test_attention(be, rng, B, T, H, D):
    qkv, out_ref, saved_ref, bqkv, out, saved = _attention_both(be, rng, B, T, H, D)
    np.testing.assert_allclose(out, out_ref, rtol=RTOL, atol=ATOL)
    dout = _f(rng, B, T, H * D)
    dqkv_ref = np.zeros_like(qkv)
    numpy_ref.attention_bwd(dqkv_ref, dout, qkv, out_ref, saved_ref, H)
    dqkv = be.zeros(qkv.shape)
    be.attention_bwd(dqkv, be.from_numpy(dout), bqkv, out, saved, H)
    np.testing.assert_allclose(dqkv, dqkv_ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("B,H,D,prompt", [(1, 1, 8, 1), (2, 3, 5, 6)])
def test_attention_decode(be, rng, B, H, D, prompt):
    maxT, C = 12, H * D
    caches_ref = [np.zeros((B, H, maxT, D), np.float32) for _ in range(2)]
    caches = [be.zeros((B, H, maxT, D)) for _ in range(2)]
    pos = 0
    for Tn in (prompt, 1, 1):
        qkv = _f(rng, B, Tn, 3 * C)
        out_ref = np.zeros((B, Tn, C), np.float32)
        numpy_ref.attention_decode(out_ref, qkv, *caches_ref, pos, H)
        out = be.zeros((B, Tn, C))
        be.attention_decode(out, be.from_numpy(qkv), *caches, pos, H)
        np.testing.assert_allclose(out, out_ref, rtol=RTOL, atol=ATOL)
        pos += Tn


@pytest.mark.parametrize("n", [1, 15, 1001])
@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_activation(be, rng, n, act):
    x = _f(rng, n) * 4
    _run(be, f"{act}_fwd", [_f(rng, n), x], [0])
    _run(be, f"{act}_bwd", [_f(rng, n), _f(rng, n), x], [0])
    # in place: dinp aliases dout
    dout = _f(rng, n)
    ref = dout.copy()
    getattr(numpy_ref, f"{act}_bwd")(ref, ref, x)
    mine = be.from_numpy(dout)
    getattr(be, f"{act}_bwd")(mine, mine, be.from_numpy(x))
    np.testing.assert_allclose(mine, ref, rtol=RTOL, atol=ATOL)


def test_residual(be, rng):
    _run(be, "residual_fwd", [_f(rng, 3, 37), _f(rng, 3, 37), _f(rng, 3, 37)], [0])


@pytest.mark.parametrize("n,p,seed", [(1, 0.5, 0), (1000, 0.1, 7), (4099, 0.5, 2 ** 32 - 1)])
def test_dropout_is_bit_exact(be, rng, n, p, seed):
    mine, ref = _run(be, "dropout_fwd", [_f(rng, n), _f(rng, n), p, seed], [0], 1e-6, 0)
    assert np.array_equal(mine[0] == 0, ref[0] == 0)
    _run(be, "dropout_bwd", [_f(rng, n), _f(rng, n), p, seed], [0], 1e-6, 0)


@pytest.mark.parametrize("N,V", [(1, 3), (7, 5003), (33, 65)])
@pytest.mark.parametrize("with_grad", [True, False])
def test_softmax_xent(be, rng, N, V, with_grad):
    logits = _f(rng, N, V) * 5
    targets = rng.integers(0, V, N).astype(np.int32)
    targets[0] = -1 if N > 1 else targets[0]
    dlogits = _f(rng, N, V) if with_grad else None
    _run(be, "softmax_xent", [_f(rng, N), dlogits, logits, targets, 1.0 / N],
         [0, 1] if with_grad else [0])


def test_softmax_xent_in_place(be, rng):
    logits, targets = _f(rng, 5, 70), np.array([3, -1, 0, 69, 5], np.int32)
    ref = logits.copy()
    numpy_ref.softmax_xent(np.zeros(5, np.float32), ref, ref, targets, 0.25)
    mine = be.from_numpy(logits)
    be.softmax_xent(be.zeros(5), mine, mine, be.from_numpy(targets, np.int32), 0.25)
    np.testing.assert_allclose(mine, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_update(be, rng, momentum):
    n = 1003
    buf = _f(rng, n) if momentum else None
    _run(be, "sgd_update", [_f(rng, n), _f(rng, n), buf, 0.1, momentum, 0.01, 517],
         [0] + ([2] if momentum else []))


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("step", [1, 3])
def test_adam_update(be, rng, decoupled, step):
    n = 1003
    v = np.abs(_f(rng, n))
    _run(be, "adam_update", [_f(rng, n), _f(rng, n), _f(rng, n), v, 1e-2, 0.9, 0.99, 1e-8, 0.1,
                             step, 517, decoupled], [0, 2, 3])


@pytest.mark.parametrize("tie,act", [(False, "gelu"), (True, "relu")])
def test_whole_model_matches_reference(be, rng, tie, act):
    """Logits, loss and every gradient of the whole model agree with numpy (rel <= 1e-4)."""
    import sllm
    cfg = sllm.ModelConfig(vocab_size=67, embedding_dim=24, num_layers=2, num_heads=3,
                           ffn_hidden_dim=40, dropout=0.1, max_seq_len=16,
                           activation=act, tie_embeddings=tie)
    ref, mine = sllm.SLLM(cfg, backend="numpy", seed=3), sllm.SLLM(cfg, backend=be, seed=3)
    x = rng.integers(0, 67, (2, 13))
    y = rng.integers(0, 67, (2, 13))
    y[1, :4] = -1
    np.testing.assert_allclose(mine.eval().forward(x), ref.eval().forward(x), rtol=1e-4,
                               atol=1e-4)
    ref.train(), mine.train()  # dropout on: the counter-based masks must agree too
    assert mine.forward_backward(x, y) == pytest.approx(ref.forward_backward(x, y), rel=1e-5)
    for name, g in ref.gradients().items():
        scale = float(np.abs(g).max()) + 1e-6
        err = float(np.abs(mine.gradients()[name] - g).max()) / scale
        assert err <= 1e-4, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("n", [1, 7, 1003, 32768 * 3 + 5, (1 << 17) + 9])
def test_grad_norm_sq(be, rng, n):
    """The sum of squares in float64 over awkward lengths (tails, several blocks, threads)."""
    g = _f(rng, n) * 3
    ref = numpy_ref.grad_norm_sq(g)
    assert be.grad_norm_sq(be.from_numpy(g)) == pytest.approx(ref, rel=1e-12)
    assert ref == pytest.approx(float(np.dot(g.astype(np.float64), g)), rel=1e-12)
