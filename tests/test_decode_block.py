"""The fused decode_block kernel: cpp's and the wasm modules' one-call block equals the
kernel-by-kernel line bit for bit (f32 and every quantized type; a continuous-batching step
too), backends without it still decode through the
contract's default, and the binding refuses bad arguments by name. Kernel-level agreement
with the reference on awkward shapes is in the conformance suite (tests/test_kernels.py)."""
import numpy as np
import pytest

import sllm
from sllm import backends
from sllm.backends import reference
from sllm.backends.base import KERNELS, Backend, decode_block_workspace
from sllm.quant import quantize_weight, quantized_weight_names

CFG = dict(vocab_size=53, embedding_dim=40, num_layers=2, num_heads=5, ffn_hidden_dim=72,
           dropout=0.1, max_seq_len=24)
needs_cpp = pytest.mark.skipif("cpp" not in backends.available(), reason="cpp not built")


def _model(backend, activation="gelu", qtype=None):
    if activation == "llama":  # grouped-query attention, head dim 8
        cfg = sllm.ModelConfig(**CFG, architecture="llama", num_kv_heads=1)
    else:
        cfg = sllm.ModelConfig(**CFG, activation=activation)
    model = sllm.SLLM(cfg, backend=backend, seed=7)
    return (model.quantize(qtype) if qtype else model).eval()


def _decode_run(model):
    """Logits of a 6-token prefill and 10 single-token steps, the cache, greedy ids."""
    tokens = np.random.default_rng(1).integers(0, CFG["vocab_size"], (1, 16))
    cache = model.new_cache(1)
    rows = [model.decode(tokens[:, :6], cache)]
    rows += [model.decode(tokens[:, t:t + 1], cache) for t in range(6, 16)]
    ids = model.generate([int(t) for t in tokens[0, :4]], 12, temperature=0)
    return np.concatenate(rows), np.stack(cache.k + cache.v), ids


FUSED = [n for n in ("cpp", "wasm", "wasm-simd") if n in backends.available()]


@pytest.mark.parametrize("qtype", [None, "q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("activation", ["gelu", "relu", "llama"])
@pytest.mark.parametrize("name", FUSED)
def test_fused_block_is_bit_identical_to_the_kernel_line(name, qtype, activation, monkeypatch):
    kernel = "llama_decode_block" if activation == "llama" else "decode_block"
    if getattr(type(backends.get(name)), kernel) is getattr(Backend, kernel):
        pytest.skip(f"{name} runs {kernel} as the contract's composition")
    model = _model(name, activation, qtype)
    calls, own = [], getattr(model.backend, kernel)
    monkeypatch.setattr(model.backend, kernel, lambda *a, **k: calls.append(1) or own(*a, **k))
    fused = _decode_run(model)
    assert calls, "the decode steps ran the fused block"
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


class ContractOnly(Backend):
    """A plugin written before decode_block existed: every required kernel, no fusion."""

    name = "contract-only"
    reference_kernels = frozenset(KERNELS)


def test_the_contract_default_equals_the_kernel_line(backend_name):
    be = backends.get(backend_name)
    args = _block_args()
    mine = [be.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args]
    mine[5] = tuple(be.from_numpy(p) for p in args[5])
    Backend.decode_block(be, *mine)
    reference.decode_block(*args)
    for i in (0, 2, 3):
        np.testing.assert_allclose(mine[i], args[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["numpy", "contract-only"])
def test_backends_without_the_fused_kernel_still_decode(name):
    be = ContractOnly() if name == "contract-only" else backends.get(name)
    assert type(be).missing_kernels() == []  # optional: never demanded
    model, ref = _model(be), _model("numpy")
    if name != "numpy":  # the composing default, which the model leaves for the kernel line
        assert type(be).decode_block is Backend.decode_block and model._blocks == [None, None]
    mine, want = _decode_run(model), _decode_run(ref)
    np.testing.assert_allclose(mine[0], want[0], rtol=1e-4, atol=1e-4)
    assert mine[2] == want[2]


def _assert_decode_equals_forward(model, tokens, prefill, atol):
    """Prefill `prefill` positions, then decode one at a time: each step's logits are the
    full forward's at that position."""
    cache = model.new_cache(tokens.shape[0])
    rows = [model.decode(tokens[:, :prefill], cache)] + [
        model.decode(tokens[:, t:t + 1], cache) for t in range(prefill, tokens.shape[1])]
    np.testing.assert_allclose(np.stack(rows, 1), model.forward(tokens)[:, prefill - 1:],
                               rtol=0, atol=atol)


def test_decode_equals_full_forward_with_the_fused_block(backend_name):
    tokens = np.random.default_rng(2).integers(0, CFG["vocab_size"], (2, 9))
    _assert_decode_equals_forward(_model(backend_name), tokens, 4, 2e-5)


def test_a_layer_of_mixed_weight_types_decodes_kernel_by_kernel(backend_name):
    cfg = sllm.ModelConfig(**CFG)
    float_model = sllm.SLLM(cfg, backend="numpy", seed=7)
    params = float_model.parameters()
    qtypes = {n: ("q4_0" if n == "h.0.mlp.c_fc.weight" else "q8_0")
              for n in quantized_weight_names(cfg)}
    rows = {n: (q, quantize_weight(n, params[n], q)) for n, q in qtypes.items()}
    model = sllm.SLLM(cfg, backend=backend_name, init=None, quantized=rows).eval()
    for name, p in model.parameters().items():
        p[...] = params[name]
    fused = type(model.backend).decode_block is not Backend.decode_block
    assert model._blocks[0] is None and (model._blocks[1] is not None) == fused
    tokens = np.random.default_rng(3).integers(0, CFG["vocab_size"], (1, 7))
    _assert_decode_equals_forward(model, tokens, 3, 1e-4)


def _block_args(B=1, Tn=2, H=2, D=4, F=11, pos=3, maxT=8):
    rng = np.random.default_rng(0)
    C = H * D

    def f(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    params = (f(C), f(C), f(C, 3 * C), f(3 * C), f(C, C), f(C), f(C), f(C), f(C, F), f(F),
              f(F, C), f(C))
    work = np.zeros(decode_block_workspace(B, Tn, C, F), np.float32)
    return [f(B, Tn, C), f(B, Tn, C), f(B, H, maxT, D), f(B, H, maxT, D), work, params, pos,
            H, "gelu", None]


def test_workspace_size_and_reference_agree_with_the_kernel_line():
    assert decode_block_workspace(2, 3, 8, 20) == 6 * (8 * 8 + 2 * 20 + 2)
    args = _block_args()
    out, x, kc, vc, work, p, pos, H = args[:8]
    want_k, want_v = kc.copy(), vc.copy()
    N, C, F = 2, 8, 11
    ln, atty, proj, res2, fcp = (np.empty_like(x) for _ in range(5))
    mean, rstd = np.empty(N, np.float32), np.empty(N, np.float32)
    qkv, fch, act = (np.empty((1, 2, w), np.float32) for w in (3 * C, F, F))
    reference.layernorm_fwd(ln, mean, rstd, x, p[0], p[1])
    reference.matmul_fwd(qkv, ln, p[2], p[3])
    reference.attention_decode(atty, qkv, want_k, want_v, pos, H)
    reference.matmul_fwd(proj, atty, p[4], p[5])
    reference.residual_fwd(res2, x, proj)
    reference.layernorm_fwd(ln, mean, rstd, res2, p[6], p[7])
    reference.matmul_fwd(fch, ln, p[8], p[9])
    reference.gelu_fwd(act, fch)
    reference.matmul_fwd(fcp, act, p[10], p[11])
    want = res2 + fcp
    reference.decode_block(*args)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(kc, want_k)
    np.testing.assert_array_equal(vc, want_v)


def _param(args, i, value):
    """Replace tensor i of the block's params."""
    args[5] = args[5][:i] + (value,) + args[5][i + 1:]


def _share(args, i, j, offset):
    """Make argument i a view that starts `offset` floats into argument j's memory."""
    a, b = args[i], args[j]
    base = np.zeros(offset + max(a.size, b.size - offset) + b.size, np.float32)
    args[j] = base[:b.size].reshape(b.shape)
    args[i] = base[offset:offset + a.size].reshape(a.shape)


@needs_cpp
@pytest.mark.parametrize("change, message", [
    (lambda a: a.__setitem__(4, a[4][:-1]), "work has .* needs"),
    (lambda a: a.__setitem__(5, a[5][:11]), "params must hold the block's 12 tensors"),
    (lambda a: a.__setitem__(8, "swish"), "activation must be 'gelu' or 'relu'"),
    (lambda a: a.__setitem__(9, "q5_0"), "qtype must be q8_0, q4_0 or q4_1"),
    (lambda a: a.__setitem__(9, "q8_0"), "attn_w must be uint8"),
    (lambda a: _param(a, 2, np.zeros((8, 23), np.float32)), r"attn_w must be \(8, 24\)"),
    (lambda a: _param(a, 9, np.zeros(10, np.float32)), "fc_b has 10 elements"),
    (lambda a: a.__setitem__(6, 7), "pos \\+ new positions exceed the cache length"),
    (lambda a: a.__setitem__(7, 3), "n_head must divide C"),
    (lambda a: _share(a, 0, 1, 1), "out must be x itself or not overlap it"),
    (lambda a: _share(a, 4, 1, 8), "work must not overlap x"),
    (lambda a: a.__setitem__(3, a[2]), "kcache must not overlap vcache"),
    (lambda a: a.__setitem__(2, a[2][:, :1]), "kcache and vcache shapes differ"),
])
def test_cpp_binding_refuses_bad_arguments_by_name(change, message):
    args = _block_args()
    change(args)
    with pytest.raises((ValueError, TypeError), match="decode_block: " + message):
        backends.get("cpp").decode_block(*args)


@needs_cpp
def test_cpp_binding_checks_dtype_and_contiguity():
    be = backends.get("cpp")
    args = _block_args()
    args[1] = args[1].astype(np.float64)
    with pytest.raises(TypeError, match="decode_block: x must be float32"):
        be.decode_block(*args)
    args = _block_args()
    args[4] = np.zeros(2 * args[4].size, np.float32)[::2]
    with pytest.raises(ValueError, match="decode_block: work must be C-contiguous"):
        be.decode_block(*args)


def test_declared_signature_is_the_reference_and_cpp_signature():
    import inspect
    import re
    declared = list(inspect.signature(Backend.decode_block).parameters)[1:]
    assert declared == list(inspect.signature(reference.decode_block).parameters)
    if "cpp" in backends.available():
        first_line = backends.get("cpp").decode_block.__doc__.splitlines()[0]
        assert re.findall(r"(\w+): ", first_line) == declared
