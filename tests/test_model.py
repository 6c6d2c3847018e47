"""The model on the numpy reference: gradients by finite differences in float64, dropout,
learning, generation through the KV cache, and input validation."""
import numpy as np
import pytest

import sllm
from sllm.backends.numpy_ref import NumpyBackend
from sllm.optim import SGD, Adam


def _numeric_grad(model, x, y, flat, j, h=1e-5):
    old = flat[j]
    flat[j] = old + h
    plus = model.loss(x, y)
    flat[j] = old - h
    minus = model.loss(x, y)
    flat[j] = old
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("tie", [False, True])
def test_gradients_match_finite_differences(tiny_config, rng, activation, tie):
    cfg = tiny_config.replace(activation=activation, tie_embeddings=tie)
    model = sllm.SLLM(cfg, backend=NumpyBackend(np.float64), seed=1)
    for p in model.parameters().values():  # move off the init so no gradient is trivially 0
        p += rng.normal(0, 0.1, p.shape)
    x = rng.integers(0, cfg.vocab_size, (2, 5))
    y = rng.integers(0, cfg.vocab_size, (2, 5))
    y[0, 1] = y[1, 4] = -1
    model.forward_backward(x, y)
    grads = {k: v.copy() for k, v in model.gradients().items()}
    assert set(grads) == set(model.parameters())
    for name, p in model.parameters().items():
        flat, g = p.reshape(-1), grads[name].reshape(-1)
        picks = rng.choice(flat.size, size=min(flat.size, 6), replace=False)
        numeric = np.array([_numeric_grad(model, x, y, flat, j) for j in picks])
        scale = max(np.abs(g).max(), 1e-8)
        np.testing.assert_allclose(g[picks], numeric, atol=1e-6 * scale + 1e-9,
                                   rtol=1e-4, err_msg=name)


def test_ignored_targets_have_no_gradient(tiny_config, rng):
    model = sllm.SLLM(tiny_config.replace(dropout=0.0), backend="numpy")
    x = rng.integers(0, 11, (1, 6))
    y = np.full((1, 6), -1)
    assert model.forward_backward(x, y) == 0.0
    assert all(not g.any() for g in model.gradients().values())


def test_gradients_are_overwritten_not_accumulated(tiny_config, rng):
    model = sllm.SLLM(tiny_config, backend="numpy")
    x, y = rng.integers(0, 11, (2, 5)), rng.integers(0, 11, (2, 5))
    model.forward_backward(x, y)
    first = {k: v.copy() for k, v in model.gradients().items()}
    model.forward_backward(x, y)
    for k, v in model.gradients().items():
        np.testing.assert_allclose(v, first[k], rtol=1e-5, atol=1e-7)


def test_dropout_train_vs_eval(tiny_config, rng):
    model = sllm.SLLM(tiny_config.replace(dropout=0.5), backend="numpy")
    x = rng.integers(0, 11, (2, 7))
    model.eval()
    a, b = model.forward(x), model.forward(x)
    np.testing.assert_array_equal(a, b)  # eval is deterministic
    model.train()
    c, d = model.forward(x), model.forward(x)
    assert not np.allclose(c, a) and not np.allclose(c, d)  # fresh masks each step


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_rate(p):
    from sllm.backends.base import dropout_keep_mask
    keep = dropout_keep_mask(200_000, p, seed=99)
    assert abs(keep.mean() - (1 - p)) < 0.005
    out = np.zeros(200_000, np.float32)
    sllm.backends.reference.dropout_fwd(out, np.ones(200_000, np.float32), p, 99)
    assert abs(out.mean() - 1.0) < 0.01  # inverted scaling keeps the expectation


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_overfits_a_repeated_sequence(opt):
    cfg = sllm.ModelConfig(vocab_size=16, embedding_dim=32, num_layers=2, num_heads=2,
                           ffn_hidden_dim=64, dropout=0.0, max_seq_len=16)
    model = sllm.SLLM(cfg, backend="numpy", seed=0)
    seq = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3]])
    x, y = seq[:, :-1], seq[:, 1:]
    optimizer = Adam(model, lr=3e-3) if opt == "adam" else SGD(model, lr=0.3, momentum=0.9)
    for _ in range(300):
        loss = model.forward_backward(x, y)
        optimizer.clip_grad_norm(1.0)
        optimizer.step()
    assert loss < 0.05


def test_kv_cache_decode_equals_full_forward(rng):
    cfg = sllm.ModelConfig(vocab_size=23, embedding_dim=16, num_layers=2, num_heads=4,
                           ffn_hidden_dim=32, dropout=0.1, max_seq_len=12)
    model = sllm.SLLM(cfg, backend="numpy").eval()
    seq = rng.integers(0, 23, (1, 10))
    full = model.forward(seq)
    cache = model.new_cache(1)
    np.testing.assert_allclose(model.decode(seq[:, :6], cache), full[:, 5], rtol=1e-5, atol=1e-5)
    for t in range(6, 10):
        np.testing.assert_allclose(model.decode(seq[:, t:t + 1], cache), full[:, t],
                                   rtol=1e-5, atol=1e-5)


def test_generate_is_seeded_and_greedy_is_argmax(tiny_config):
    model = sllm.SLLM(tiny_config, backend="numpy")
    a = model.generate([1, 2], 5, seed=4)
    assert a == model.generate([1, 2], 5, seed=4) and a[:2] == [1, 2] and len(a) == 7
    greedy = model.generate([1, 2], 1, temperature=0)
    assert greedy[-1] == int(np.argmax(model.eval().forward([[1, 2]])[0, -1]))
    assert model.generate([1], 3, top_k=1)[1:] == model.generate([1], 3, temperature=0)[1:]


def test_generate_past_the_context_warns(tiny_config):
    model = sllm.SLLM(tiny_config, backend="numpy")
    with pytest.warns(UserWarning, match="context full"):
        out = model.generate([1, 2, 3], 20, seed=0)
    assert len(out) == 23


def test_parameters_are_live_views(tiny_config, rng):
    model = sllm.SLLM(tiny_config, backend="numpy").eval()
    x = rng.integers(0, 11, (1, 4))
    before = model.forward(x)
    params = model.parameters()
    assert all(p.dtype == np.float32 and p.flags.c_contiguous for p in params.values())
    params["ln_f.bias"][...] += 1.0
    assert not np.allclose(model.forward(x), before)
    assert model.num_parameters() == sum(p.size for p in params.values())


@pytest.mark.parametrize("tokens,match", [
    (np.zeros((1, 9), int), "max_seq_len"), (np.array([[0, 11]]), "token ids"),
    (np.array([[0.5]]), "integers"), (np.zeros((1, 0), int), "T <=")])
def test_bad_tokens(tiny_config, tokens, match):
    with pytest.raises(ValueError, match=match):
        sllm.SLLM(tiny_config, backend="numpy").forward(tokens)


@pytest.mark.parametrize("init", ["gpt2", "xavier", "he"])
def test_inits(tiny_config, init):
    p = sllm.SLLM(tiny_config.replace(num_layers=4), backend="numpy", init=init).parameters()
    assert np.all(p["h.0.ln_1.weight"] == 1) and np.all(p["h.0.attn.c_attn.bias"] == 0)
    assert 0 < p["h.0.mlp.c_fc.weight"].std() < 1
    if init == "gpt2":
        ratio = p["h.0.attn.c_proj.weight"].std() / p["h.0.attn.c_attn.weight"].std()
        assert ratio == pytest.approx(1 / np.sqrt(8), rel=0.2)
    with pytest.raises(ValueError, match="init"):
        sllm.SLLM(tiny_config, backend="numpy", init="bogus")


def test_generation_releases_the_kv_cache_on_every_exit(tiny_config):
    """Backend memory (wasm linear memory) is not garbage collected: the cache must be
    given back on [EOS] and when a caller stops the stream early."""
    model = sllm.SLLM(tiny_config, backend="numpy")
    released, make_cache = [], model.new_cache

    def tracking_cache(batch=1):
        cache = make_cache(batch)
        release = cache.release
        cache.release = lambda: (released.append(1), release())
        return cache

    model.new_cache = tracking_cache
    first = model.generate([1, 2], 1, temperature=0)[-1]
    assert model.generate([1, 2], 10, temperature=0, eos_id=first)[-1] == first
    assert len(released) == 2
    tokens = sllm.generate.stream(model, [1, 2], 10)
    next(tokens)
    tokens.close()
    assert len(released) == 3


def test_one_dimensional_tokens_and_targets(tiny_config):
    model = sllm.SLLM(tiny_config, backend="numpy")
    assert model.forward_backward([1, 2, 3], [2, 3, -1]) == pytest.approx(
        model.forward_backward([[1, 2, 3]], [[2, 3, -1]]))


def test_numpy_integers_in_config(tiny_config):
    cfg = sllm.ModelConfig(vocab_size=np.int64(11), embedding_dim=np.int32(8), num_heads=2)
    assert cfg.vocab_size == 11 and type(cfg.vocab_size) is int
