"""Optimizer steps against hand-computed values, the decay mask, clipping; schedules."""
import math

import numpy as np
import pytest

import sllm
from sllm.optim import SGD, Adam, AdamW
from sllm.schedule import Constant, LinearDecay, WarmupCosine

GRADS = [0.5, -1.0, 2.0]  # the gradient each of three steps sees, for every element


@pytest.fixture
def model():
    cfg = sllm.ModelConfig(vocab_size=5, embedding_dim=4, num_layers=1, num_heads=1,
                           ffn_hidden_dim=4, dropout=0.0, max_seq_len=4)
    m = sllm.SLLM(cfg, backend="numpy")
    m.flat_params[...] = 1.0
    return m


def _run(model, opt):
    for g in GRADS:
        model.flat_grads[...] = g
        opt.step()
    return model.parameters()


def _adam_by_hand(lr, b1, b2, eps, wd, decoupled, decay):
    p, m, v = 1.0, 0.0, 0.0
    for t, g in enumerate(GRADS, start=1):
        if decay and decoupled:
            p *= 1 - lr * wd
        elif decay:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p -= lr * (m / (1 - b1 ** t)) / (math.sqrt(v / (1 - b2 ** t)) + eps)
    return p


@pytest.mark.parametrize("cls,decoupled", [(Adam, False), (AdamW, True)])
def test_adam_three_steps(model, cls, decoupled):
    params = _run(model, cls(model, lr=0.1, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.5))
    for name, want_decay in (("wte", True), ("h.0.mlp.c_fc.weight", True),
                             ("ln_f.bias", False), ("h.0.ln_1.weight", False)):
        want = _adam_by_hand(0.1, 0.8, 0.9, 1e-8, 0.5, decoupled, want_decay)
        np.testing.assert_allclose(params[name], want, rtol=1e-6, err_msg=name)


def test_sgd_momentum_three_steps(model):
    params = _run(model, SGD(model, lr=0.1, momentum=0.9, weight_decay=0.1))
    for name, decay in (("wte", True), ("ln_f.weight", False)):
        p, buf = 1.0, 0.0
        for g in GRADS:
            g = g + (0.1 * p if decay else 0.0)
            buf = 0.9 * buf + g
            p -= 0.1 * buf
        np.testing.assert_allclose(params[name], p, rtol=1e-6, err_msg=name)


def test_plain_sgd(model):
    params = _run(model, SGD(model, lr=0.5))
    np.testing.assert_allclose(params["wpe"], 1.0 - 0.5 * sum(GRADS), rtol=1e-6)


def test_clip_grad_norm(model):
    opt = AdamW(model)
    model.flat_grads[...] = 0.0
    model.gradients()["wte"][...] = 3.0  # 20 elements of 3 -> norm sqrt(180)
    norm = opt.clip_grad_norm(1.0)
    assert norm == pytest.approx(math.sqrt(180))
    assert np.linalg.norm(model.flat_grads) == pytest.approx(1.0, rel=1e-5)
    assert opt.clip_grad_norm(10.0) == pytest.approx(1.0, rel=1e-5)  # below: untouched


def test_state_dict_round_trip(model):
    opt = AdamW(model, lr=0.1)
    _run(model, opt)
    state = opt.state_dict()
    other = AdamW(model, lr=0.5)
    other.load_state_dict(state)
    assert other.step_count == 3 and other.lr == 0.1
    np.testing.assert_array_equal(other.buffers["v"], opt.buffers["v"])
    with pytest.raises(ValueError, match="AdamW"):
        SGD(model, lr=0.1).load_state_dict(state)


def test_lr_is_settable(model):
    opt = SGD(model, lr=0.1)
    opt.lr = 0.0
    before = model.flat_params.copy()
    _run(model, opt)
    np.testing.assert_array_equal(model.flat_params, before)


def test_warmup_cosine_boundaries():
    s = WarmupCosine(1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert s.lr_at(0) == pytest.approx(0.1)
    assert s.lr_at(9) == pytest.approx(1.0)
    assert s.lr_at(10) == pytest.approx(1.0)
    assert s.lr_at(60) == pytest.approx(0.55)
    assert s.lr_at(110) == pytest.approx(0.1) and s.lr_at(10_000) == 0.1


def test_linear_decay_boundaries():
    s = LinearDecay(2.0, warmup_steps=0, total_steps=100, min_lr=0.0)
    assert s.lr_at(0) == 2.0 and s.lr_at(50) == pytest.approx(1.0) and s.lr_at(100) == 0.0


def test_constant():
    assert Constant(3e-4).lr_at(0) == Constant(3e-4).lr_at(10 ** 6) == 3e-4
