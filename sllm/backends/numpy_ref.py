"""The numpy reference backend: every kernel, plain and readable. It is the oracle.

Each kernel follows the signature documented in base.py. The kernels work in the dtype
of the arrays they are given, so the same code runs in float64 for gradient checks.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .base import KERNELS, LAYERNORM_EPS, Backend, dropout_keep_mask

GELU_SCALE = math.sqrt(2.0 / math.pi)


def _rows(a: np.ndarray) -> np.ndarray:
    """A (N, C) view of a (..., C) array."""
    return a.reshape(-1, a.shape[-1])


# ---- embedding ---------------------------------------------------------------------------
def encoder_fwd(out, tokens, wte, wpe, pos=0):
    """out (B,T,C) = wte[tokens] + wpe[pos:pos+T]."""
    T = tokens.shape[1]
    out[...] = wte[tokens] + wpe[pos:pos + T]


def encoder_bwd(dwte, dwpe, dout, tokens, pos=0):
    """dwte[tokens] += dout (summing repeats); dwpe[pos:pos+T] += dout summed over batch."""
    C = dout.shape[-1]
    np.add.at(dwte, tokens.reshape(-1), dout.reshape(-1, C))
    dwpe[pos:pos + tokens.shape[1]] += dout.sum(axis=0)


# ---- layernorm ---------------------------------------------------------------------------
def layernorm_fwd(out, mean, rstd, inp, weight, bias):
    """LayerNorm over the last axis; saves mean and 1/std per row for backward."""
    x = _rows(inp)
    mu = x.mean(axis=1)
    xc = x - mu[:, None]
    rs = 1.0 / np.sqrt((xc * xc).mean(axis=1) + LAYERNORM_EPS)
    _rows(out)[...] = xc * rs[:, None] * weight + bias
    mean.reshape(-1)[...] = mu
    rstd.reshape(-1)[...] = rs


def layernorm_bwd(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    """Accumulates into dinp, dweight and dbias."""
    dy, x = _rows(dout), _rows(inp)
    rs = rstd.reshape(-1)[:, None]
    norm = (x - mean.reshape(-1)[:, None]) * rs
    dnorm = dy * weight
    dbias += dy.sum(axis=0)
    dweight += (dy * norm).sum(axis=0)
    _rows(dinp)[...] += rs * (dnorm - dnorm.mean(axis=1, keepdims=True)
                              - norm * (dnorm * norm).mean(axis=1, keepdims=True))


# ---- matmul ------------------------------------------------------------------------------
def matmul_fwd(out, inp, weight, bias, trans_w=False):
    """out = inp @ weight (+ bias); weight is (OC, C) and used transposed when trans_w."""
    w = weight.T if trans_w else weight
    o = _rows(out)
    np.matmul(_rows(inp), w, out=o)
    if bias is not None:
        o += bias


def matmul_bwd(dinp, dweight, dbias, dout, inp, weight, trans_w=False):
    """dinp = dout @ W^T (overwritten); dweight += inp^T @ dout (or its transpose); dbias += sum."""
    dy, x = _rows(dout), _rows(inp)
    if dinp is not None:
        np.matmul(dy, weight if trans_w else weight.T, out=_rows(dinp))
    dweight += (dy.T @ x) if trans_w else (x.T @ dy)
    if dbias is not None:
        dbias += dy.sum(axis=0)


# ---- attention ---------------------------------------------------------------------------
def _split_heads(qkv, n_head):
    """(B,T,3C) -> q, k, v each (B,H,T,D)."""
    B, T, C3 = qkv.shape
    D = C3 // 3 // n_head
    parts = qkv.reshape(B, T, 3, n_head, D).transpose(2, 0, 3, 1, 4)
    return parts[0], parts[1], parts[2]


def _merge_heads(y):
    """(B,H,T,D) -> (B,T,H*D)."""
    B, H, T, D = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def _causal_softmax(scores, q_pos0=0):
    """Softmax over keys, masking key j > query position (q_pos0 + i)."""
    Tq, Tk = scores.shape[-2:]
    mask = np.arange(Tk)[None, :] > (q_pos0 + np.arange(Tq))[:, None]
    scores = np.where(mask, -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def attention_fwd(out, saved, qkv, n_head):
    """Causal multi-head attention; saves the attention probabilities (B,H,T,T)."""
    q, k, v = _split_heads(qkv, n_head)
    scale = 1.0 / math.sqrt(q.shape[-1])
    att = _causal_softmax(q @ k.transpose(0, 1, 3, 2) * scale)
    saved[...] = att
    out[...] = _merge_heads(att @ v)


def attention_bwd(dqkv, dout, qkv, out, saved, n_head):
    """Gradient of attention_fwd with respect to qkv (overwritten)."""
    q, k, v = _split_heads(qkv, n_head)
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D)
    att = saved
    dy = dout.reshape(B, T, H, D).transpose(0, 2, 1, 3)
    datt = dy @ v.transpose(0, 1, 3, 2)
    dv = att.transpose(0, 1, 3, 2) @ dy
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) * scale
    dq = dscores @ k
    dk = dscores.transpose(0, 1, 3, 2) @ q
    grads = np.stack([dq, dk, dv])  # (3,B,H,T,D)
    dqkv[...] = grads.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * H * D)


def attention_decode(out, qkv, kcache, vcache, pos, n_head):
    """Incremental attention with a KV cache: store new k, v at pos.., attend causally."""
    q, k, v = _split_heads(qkv, n_head)
    Tn = q.shape[2]
    kcache[:, :, pos:pos + Tn] = k
    vcache[:, :, pos:pos + Tn] = v
    keys, values = kcache[:, :, :pos + Tn], vcache[:, :, :pos + Tn]
    scale = 1.0 / math.sqrt(q.shape[-1])
    att = _causal_softmax(q @ keys.transpose(0, 1, 3, 2) * scale, q_pos0=pos)
    out[...] = _merge_heads(att @ values)


def attention_decode_batch(out, qkv, kcache, vcache, slots, positions, n_head):
    """One new position per sequence, each in its own cache slot at its own position."""
    B, C = qkv.shape[0], qkv.shape[-1] // 3
    q, k, v = _split_heads(qkv.reshape(B, 1, 3 * C), n_head)  # (B,H,1,D) each
    scale = 1.0 / math.sqrt(q.shape[-1])
    rows = out.reshape(B, C)
    for b, (slot, pos) in enumerate(zip(np.asarray(slots).tolist(), np.asarray(positions).tolist())):
        kcache[slot, :, pos] = k[b, :, 0]
        vcache[slot, :, pos] = v[b, :, 0]
        keys, values = kcache[slot, :, :pos + 1], vcache[slot, :, :pos + 1]  # (H,pos+1,D)
        att = _causal_softmax(q[b] @ keys.transpose(0, 2, 1) * scale, q_pos0=pos)
        rows[b] = (att @ values).reshape(C)


# ---- activations, residual, dropout --------------------------------------------------------
def gelu_fwd(out, inp):
    """GPT-2's tanh-approximated GELU."""
    x = inp
    out[...] = 0.5 * x * (1.0 + np.tanh(GELU_SCALE * (x + 0.044715 * (x * x * x))))


def gelu_bwd(dinp, dout, inp):
    """dinp = dout * gelu'(inp); dinp may alias dout."""
    x = inp
    t = np.tanh(GELU_SCALE * (x + 0.044715 * (x * x * x)))
    dt = GELU_SCALE * (1.0 + 3 * 0.044715 * x * x)
    dinp[...] = dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dt)


def relu_fwd(out, inp):
    """out = max(inp, 0)."""
    np.maximum(inp, 0, out=out)


def relu_bwd(dinp, dout, inp):
    """dinp = dout where inp > 0, else 0; dinp may alias dout."""
    dinp[...] = np.where(inp > 0, dout, 0)


def residual_fwd(out, a, b):
    """out = a + b."""
    np.add(a, b, out=out)


def dropout_fwd(out, inp, p, seed):
    """Inverted dropout with the counter-based mask (see base.dropout_keep_mask)."""
    keep = dropout_keep_mask(inp.size, p, seed).reshape(inp.shape)
    out[...] = np.where(keep, inp / (1.0 - p), 0)


def dropout_bwd(dinp, dout, p, seed):
    """Backward of dropout_fwd: the same mask, recomputed from the seed."""
    dropout_fwd(dinp, dout, p, seed)


# ---- loss --------------------------------------------------------------------------------
def softmax_xent(losses, dlogits, logits, targets, dloss):
    """Fused softmax + cross-entropy per row; targets of -1 give zero loss and gradient."""
    z = _rows(logits)
    t = targets.reshape(-1)
    valid = t >= 0
    tt = np.where(valid, t, 0)
    rows = np.arange(z.shape[0])
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    s = e.sum(axis=1, keepdims=True)
    logp = z[rows, tt] - zmax[:, 0] - np.log(s[:, 0])
    losses.reshape(-1)[...] = np.where(valid, -logp, 0)
    if dlogits is not None:
        probs = e / s
        probs[rows, tt] -= 1.0
        probs *= np.where(valid, dloss, 0)[:, None]
        _rows(dlogits)[...] = probs


# ---- optimizers --------------------------------------------------------------------------
def sgd_update(params, grads, momentum_buf, lr, momentum, weight_decay, decay_count):
    """torch.optim.SGD (dampening 0, no Nesterov) with L2 decay on params[:decay_count]."""
    g = grads.copy()
    g[:decay_count] += weight_decay * params[:decay_count]
    if momentum:
        momentum_buf *= momentum
        momentum_buf += g
        g = momentum_buf
    params -= lr * g


def adam_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step,
                decay_count, decoupled):
    """torch.optim.Adam (L2 added to the gradient) or AdamW (decoupled decay), step >= 1."""
    g = grads.copy()
    if decoupled:
        params[:decay_count] *= 1.0 - lr * weight_decay
    else:
        g[:decay_count] += weight_decay * params[:decay_count]
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    m_hat = m / (1.0 - beta1 ** step)
    v_hat = v / (1.0 - beta2 ** step)
    params -= lr * m_hat / (np.sqrt(v_hat) + eps)


class NumpyBackend(Backend):
    """The reference backend: every kernel is the plain numpy code above.

    `NumpyBackend(dtype=np.float64)` runs the whole model in double precision, which the
    finite-difference gradient checks use.
    """

    name: ClassVar[str] = "numpy"
    priority: ClassVar[int] = 50
    reference_kernels: ClassVar[frozenset[str]] = frozenset(KERNELS)

    def __init__(self, dtype: Any = np.float32) -> None:
        super().__init__()
        self.dtype = np.dtype(dtype)

    @classmethod
    def probe(cls) -> dict[str, Any]:
        """Always available; reports the BLAS numpy was built with."""
        return {"blas": _blas_name(), "dtype": "float32|float64"}


def _blas_name() -> str:
    try:
        config = np.show_config(mode="dicts")
        return config["Build Dependencies"]["blas"]["name"]
    except Exception:  # noqa: BLE001 - older numpy has no dict form; the name is cosmetic
        return "unknown"
