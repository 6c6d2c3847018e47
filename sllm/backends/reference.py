"""The numpy reference kernels: every kernel of the contract, plain and readable. The oracle.

Each function has the signature `Backend` declares in base.py (outputs first, then inputs,
weights, sizes/options). The kernels work in the dtype of the arrays they are given, so the
same code runs in float64 for gradient checks. This module imports nothing of the backend
registry or contract: base.py, every backend and the conformance checker depend on it, not
the other way round.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from sllm.quant import column_slices, dequantize, quantize_q8_0_activations, unpack_q  # block formats: numpy only

Array = np.ndarray

LAYERNORM_EPS = 1e-5
GELU_SCALE = math.sqrt(2.0 / math.pi)
NORM_BLOCK = 1 << 16  # grad_norm_sq converts this many floats to float64 at a time


def dropout_threshold(p: float) -> int:
    """The uint32 threshold below which an element is dropped."""
    return min(int(round(p * 2.0 ** 32)), 2 ** 32 - 1)


def dropout_keep_mask(n: int, p: float, seed: int) -> np.ndarray:
    """The counter-based dropout mask every backend reproduces bit for bit.

    Element i is kept when hash32(i * 0x9E3779B1 + seed) >= p * 2^32, where hash32 is
    the murmur3 finaliser. Depending only on (seed, i), the mask is the same for any
    thread count, tiling or backend, and backward recomputes it instead of storing it.
    """
    x = np.arange(n, dtype=np.uint32) * np.uint32(0x9E3779B1) + np.uint32(seed & 0xFFFFFFFF)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    return x >= np.uint32(dropout_threshold(p))


def _rows(a: Array) -> Array:
    """A (N, C) view of a (..., C) array."""
    return a.reshape(-1, a.shape[-1])


# ---- embedding ---------------------------------------------------------------------------
def encoder_fwd(out: Array, tokens: Array, wte: Array, wpe: Array, pos: int = 0) -> None:
    """out (B,T,C) = wte[tokens] + wpe[pos:pos+T]."""
    T = tokens.shape[1]
    out[...] = wte[tokens] + wpe[pos:pos + T]


def encoder_bwd(dwte: Array, dwpe: Array, dout: Array, tokens: Array, pos: int = 0) -> None:
    """dwte[tokens] += dout (summing repeats); dwpe[pos:pos+T] += dout summed over batch."""
    C = dout.shape[-1]
    np.add.at(dwte, tokens.reshape(-1), dout.reshape(-1, C))
    dwpe[pos:pos + tokens.shape[1]] += dout.sum(axis=0)


# ---- layernorm ---------------------------------------------------------------------------
def layernorm_fwd(out: Array, mean: Array, rstd: Array, inp: Array, weight: Array,
                  bias: Array) -> None:
    """LayerNorm over the last axis; saves mean and 1/std per row for backward."""
    x = _rows(inp)
    mu = x.mean(axis=1)
    xc = x - mu[:, None]
    rs = 1.0 / np.sqrt((xc * xc).mean(axis=1) + LAYERNORM_EPS)
    _rows(out)[...] = xc * rs[:, None] * weight + bias
    mean.reshape(-1)[...] = mu
    rstd.reshape(-1)[...] = rs


def layernorm_bwd(dinp: Array, dweight: Array, dbias: Array, dout: Array, inp: Array,
                  weight: Array, mean: Array, rstd: Array) -> None:
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
def matmul_fwd(out: Array, inp: Array, weight: Array, bias: Array | None,
               trans_w: bool = False) -> None:
    """out = inp @ weight (+ bias); weight is (OC, C) and used transposed when trans_w."""
    w = weight.T if trans_w else weight
    o = _rows(out)
    np.matmul(_rows(inp), w, out=o)
    if bias is not None:
        o += bias


def embed_q_fwd(out: Array, tokens: Array, wq: Array, qtype: str) -> None:
    """out (B,T,C) = rows tokens (B,T) of quantized rows wq, dequantized (ggml's get_rows)."""
    C = out.shape[-1]
    rows = np.asarray(wq)[np.asarray(tokens).reshape(-1)]
    out.reshape(-1, C)[...] = dequantize(rows, qtype, C)


def encoder_q_fwd(out: Array, tokens: Array, wq: Array, wpe: Array, qtype: str,
                  pos: int = 0) -> None:
    """out (B,T,C) = rows tokens of quantized rows wq, dequantized, + wpe[pos:pos+T]."""
    embed_q_fwd(out, tokens, wq, qtype)
    out += wpe[pos:pos + tokens.shape[1]]


def matmul_q_fwd(out: Array, inp: Array, wq: Array, bias: Array | None, qtype: str) -> None:
    """out (N,OC) = q8_0(inp) . W^T (+ bias) for quantized rows wq, as ggml's vec_dot_*_q8_0."""
    x, o = _rows(inp), _rows(out)
    qw, dw, mw = unpack_q(wq, qtype, x.shape[1])  # (OC, nb, 32) int8, (OC, nb) float32
    OC, nb = dw.shape
    wf = np.ascontiguousarray(qw.transpose(1, 2, 0), dtype=np.float32)  # (nb, 32, OC)
    chunk = max(1, (1 << 22) // (nb * OC))
    for start in range(0, len(x), chunk):
        qx, dx = quantize_q8_0_activations(x[start:start + chunk])  # (n, nb, 32), (n, nb)
        # Integer block sums, exact in float32 (|sum| <= 32 * 127 * 128 < 2^24).
        isum = np.matmul(qx.transpose(1, 0, 2).astype(np.float32), wf)  # (nb, n, OC)
        acc = (isum * (dw.T[:, None, :] * dx.T[:, :, None])).sum(axis=0)
        if mw is not None:  # q4_1: sum_j (q_j d + m) x_j = d (q . x) + m sum_j x_j
            xs = qx.sum(axis=2, dtype=np.int32).astype(np.float32) * dx  # (n, nb)
            acc += xs @ mw.T
        o[start:start + chunk] = acc
    if bias is not None:
        o += bias


def matmul_q_bwd(dinp: Array, dout: Array, wq: Array, qtype: str) -> None:
    """dinp (N,K) = dout (N,OC) @ W, W (OC,K) the dequantized rows wq (overwritten); the
    rows dequantized a slice of columns at a time (sllm.quant.column_slices)."""
    dx, dy = _rows(dinp), _rows(dout)
    for k0, k1, cols in column_slices(wq, qtype, dx.shape[1]):
        dx[:, k0:k1] = dy @ dequantize(cols, qtype, k1 - k0)


def matmul_bwd(dinp: Array | None, dweight: Array, dbias: Array | None, dout: Array,
               inp: Array, weight: Array, trans_w: bool = False) -> None:
    """dinp = dout @ W^T (overwritten); dweight += inp^T @ dout (or its transpose); dbias += sum."""
    dy, x = _rows(dout), _rows(inp)
    if dinp is not None:
        np.matmul(dy, weight if trans_w else weight.T, out=_rows(dinp))
    dweight += (dy.T @ x) if trans_w else (x.T @ dy)
    if dbias is not None:
        dbias += dy.sum(axis=0)


# ---- attention ----------------------------------------------------------------------------
def _split_heads(qkv: Array, n_head: int) -> tuple[Array, Array, Array]:
    """(B,T,3C) -> q, k, v each (B,H,T,D)."""
    B, T, C3 = qkv.shape
    D = C3 // 3 // n_head
    parts = qkv.reshape(B, T, 3, n_head, D).transpose(2, 0, 3, 1, 4)
    return parts[0], parts[1], parts[2]


def _split_qkv(qkv: Array, n_head: int, n_kv_head: int | None) -> tuple[Array, Array, Array]:
    """(B,T,(H+2Hkv)D) -> q (B,H,T,D), k and v (B,Hkv,T,D); GPT-2's split when Hkv = H."""
    Hkv = n_kv_head or n_head
    if Hkv == n_head:
        return _split_heads(qkv, n_head)
    B, T, W = qkv.shape
    D = W // (n_head + 2 * Hkv)
    heads = qkv.reshape(B, T, n_head + 2 * Hkv, D).transpose(0, 2, 1, 3)
    return heads[:, :n_head], heads[:, n_head:n_head + Hkv], heads[:, n_head + Hkv:]


def _repeat_kv(kv: Array, groups: int) -> Array:
    """(..., Hkv, T, D) -> (..., Hkv*groups, T, D): KV head j serves query heads j*g..j*g+g-1."""
    return kv if groups == 1 else np.repeat(kv, groups, axis=-3)


def _merge_heads(y: Array) -> Array:
    """(B,H,T,D) -> (B,T,H*D)."""
    B, H, T, D = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def _causal_mask(Tq: int, Tk: int, q_pos0: int = 0) -> Array:
    """True where key j lies after query i (at position q_pos0 + i)."""
    return np.arange(Tk)[None, :] > (q_pos0 + np.arange(Tq))[:, None]


def _causal_softmax(scores: Array, q_pos0: int = 0) -> Array:
    """Softmax over keys, masking key j > query position (q_pos0 + i)."""
    Tq, Tk = scores.shape[-2:]
    scores = np.where(_causal_mask(Tq, Tk, q_pos0), -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def _scores(q: Array, k: Array) -> Array:
    """Causally masked Q K^T / sqrt(D), (B,H,T,T)."""
    s = q @ k.transpose(0, 1, 3, 2) * (1.0 / math.sqrt(q.shape[-1]))
    return np.where(_causal_mask(s.shape[-2], s.shape[-1]), -np.inf, s)


def attention_fwd(out: Array, saved: Array, qkv: Array, n_head: int,
                  n_kv_head: int | None = None) -> None:
    """Causal (grouped-query) attention; saves the probabilities (B,H,T,T), or each score
    row's logsumexp when saved is (B,H,T) (a flash-style backend's state, which a backend
    falling back to this kernel hands over)."""
    q, k, v = _split_qkv(qkv, n_head, n_kv_head)
    groups = n_head // k.shape[1]
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    scale = 1.0 / math.sqrt(q.shape[-1])
    att = _causal_softmax(q @ k.transpose(0, 1, 3, 2) * scale)
    if saved.ndim == 3:
        s = _scores(q, k)
        m = s.max(axis=-1)
        saved[...] = m + np.log(np.exp(s - m[..., None]).sum(axis=-1))
    else:
        saved[...] = att
    out[...] = _merge_heads(att @ v)


def attention_bwd(dqkv: Array, dout: Array, qkv: Array, out: Array, saved: Array,
                  n_head: int, n_kv_head: int | None = None) -> None:
    """Gradient of attention_fwd with respect to qkv (overwritten)."""
    q, k, v = _split_qkv(qkv, n_head, n_kv_head)
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    groups = H // Hkv
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    scale = 1.0 / math.sqrt(D)
    att = np.exp(_scores(q, k) - saved[..., None]) if saved.ndim == 3 else saved
    dy = dout.reshape(B, T, H, D).transpose(0, 2, 1, 3)
    datt = dy @ v.transpose(0, 1, 3, 2)
    dv = att.transpose(0, 1, 3, 2) @ dy
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) * scale
    dq = dscores @ k
    dk = dscores.transpose(0, 1, 3, 2) @ q
    if groups == 1:
        grads = np.stack([dq, dk, dv])  # (3,B,H,T,D)
        dqkv[...] = grads.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * H * D)
        return
    # a KV head's gradient sums over the g query heads it served
    dk = dk.reshape(B, Hkv, groups, T, D).sum(axis=2)
    dv = dv.reshape(B, Hkv, groups, T, D).sum(axis=2)
    dqkv[...] = np.concatenate([dq, dk, dv], axis=1).transpose(0, 2, 1, 3).reshape(dqkv.shape)


def attention_decode(out: Array, qkv: Array, kcache: Array, vcache: Array, pos: int,
                     n_head: int, n_kv_head: int | None = None) -> None:
    """Incremental attention with a KV cache (B,Hkv,maxT,D): store new k, v at pos..,
    attend causally."""
    q, k, v = _split_qkv(qkv, n_head, n_kv_head)
    Tn = q.shape[2]
    kcache[:, :, pos:pos + Tn] = k
    vcache[:, :, pos:pos + Tn] = v
    groups = n_head // kcache.shape[1]
    keys = _repeat_kv(kcache[:, :, :pos + Tn], groups)
    values = _repeat_kv(vcache[:, :, :pos + Tn], groups)
    scale = 1.0 / math.sqrt(q.shape[-1])
    att = _causal_softmax(q @ keys.transpose(0, 1, 3, 2) * scale, q_pos0=pos)
    out[...] = _merge_heads(att @ values)


def attention_decode_batch(out: Array, qkv: Array, kcache: Array, vcache: Array,
                           slots: Array, positions: Array, n_head: int,
                           n_kv_head: int | None = None) -> None:
    """One new position per sequence, each in its own cache slot at its own position."""
    B, W = qkv.shape[0], qkv.shape[-1]
    q, k, v = _split_qkv(qkv.reshape(B, 1, W), n_head, n_kv_head)  # (B,H|Hkv,1,D)
    scale = 1.0 / math.sqrt(q.shape[-1])
    groups = n_head // k.shape[1]
    rows = out.reshape(B, -1)
    sl, ps = np.asarray(slots).tolist(), np.asarray(positions).tolist()
    S, maxT = kcache.shape[0], kcache.shape[2]
    # checked here too: numpy would take slot -1 as the last one, a repeated slot twice
    if len(set(sl)) != len(sl) or any(not 0 <= x < S for x in sl):
        raise ValueError(f"slots must be distinct and in [0, {S}), got {sl}")
    if any(not 0 <= x < maxT for x in ps):
        raise ValueError(f"positions must be in [0, {maxT}), got {ps}")
    for b, (slot, pos) in enumerate(zip(sl, ps, strict=True)):
        kcache[slot, :, pos] = k[b, :, 0]
        vcache[slot, :, pos] = v[b, :, 0]
        keys = _repeat_kv(kcache[slot, :, :pos + 1], groups)  # (H,pos+1,D)
        values = _repeat_kv(vcache[slot, :, :pos + 1], groups)
        att = _causal_softmax(q[b] @ keys.transpose(0, 2, 1) * scale, q_pos0=pos)
        rows[b] = (att @ values).reshape(-1)


# ---- llama: RMSNorm, rotary embeddings, SwiGLU ---------------------------------------------
def rmsnorm_fwd(out: Array, rstd: Array, inp: Array, weight: Array, eps: float) -> None:
    """RMSNorm over the last axis; saves 1/rms per row (mean of squares in float64)."""
    x = _rows(inp)
    ms = np.mean(np.square(x, dtype=np.float64), axis=1)
    rs = (1.0 / np.sqrt(ms + eps)).astype(x.dtype)
    _rows(out)[...] = x * rs[:, None] * weight
    rstd.reshape(-1)[...] = rs


def rmsnorm_bwd(dinp: Array, dweight: Array, dout: Array, inp: Array, weight: Array,
                rstd: Array) -> None:
    """Accumulates into dinp and dweight."""
    dy, x = _rows(dout), _rows(inp)
    rs = rstd.reshape(-1)[:, None]
    norm = x * rs
    dnorm = dy * weight
    dweight += (dy * norm).sum(axis=0)
    _rows(dinp)[...] += rs * (dnorm - norm * (dnorm * norm).mean(axis=1, keepdims=True))


def rope_angles(positions: Array, D: int, theta: float, dtype: Any) -> tuple[Array, Array]:
    """cos and sin (N, D/2) of positions[n] * theta**(-2i/D), computed in float64."""
    inv_freq = float(theta) ** (-(2.0 * np.arange(D // 2, dtype=np.float64)) / D)
    angles = np.asarray(positions, dtype=np.float64).reshape(-1, 1) * inv_freq
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def _rotate(qkv: Array, positions: Array, n_head: int, n_kv_head: int, theta: float,
            sign: float) -> None:
    """Rotate the q and k heads of qkv by sign * angle (rotate-half pairs i, i + D/2)."""
    rows = _rows(qkv)
    N, W = rows.shape
    nh = n_head + n_kv_head  # the q and k heads; v follows them untouched
    D = W // (n_head + 2 * n_kv_head)
    if D % 2 or D * (n_head + 2 * n_kv_head) != W:
        raise ValueError(f"rope: qkv width {W} is not (H + 2*Hkv) * even D for H={n_head}, "
                         f"Hkv={n_kv_head}")
    cos, sin = rope_angles(positions, D, theta, rows.dtype)
    cos, sin = cos[:, None, :], sign * sin[:, None, :]
    x = rows[:, :nh * D].reshape(N, nh, D)
    x1, x2 = x[..., :D // 2].copy(), x[..., D // 2:].copy()
    x[..., :D // 2] = x1 * cos - x2 * sin
    x[..., D // 2:] = x2 * cos + x1 * sin


def rope_fwd(qkv: Array, positions: Array, n_head: int, n_kv_head: int, theta: float) -> None:
    """Rotary embedding of q and k in place (Hugging Face's rotate-half convention)."""
    _rotate(qkv, positions, n_head, n_kv_head, theta, 1.0)


def rope_bwd(dqkv: Array, positions: Array, n_head: int, n_kv_head: int, theta: float) -> None:
    """The inverse rotation of dq and dk in place (a rotation's transpose is its inverse)."""
    _rotate(dqkv, positions, n_head, n_kv_head, theta, -1.0)


def _sigmoid(x: Array) -> Array:
    with np.errstate(over="ignore"):  # exp(-x) = inf for very negative x gives 0, as it should
        return 1.0 / (1.0 + np.exp(-x))


def swiglu_fwd(out: Array, gate: Array, up: Array) -> None:
    """out = silu(gate) * up."""
    out[...] = gate * _sigmoid(gate) * up


def swiglu_bwd(dgate: Array, dup: Array, dout: Array, gate: Array, up: Array) -> None:
    """dgate = dout * up * silu'(gate), dup = dout * silu(gate); both overwritten."""
    s = _sigmoid(gate)
    silu = gate * s
    dg = dout * up * (s * (1.0 + gate * (1.0 - s)))
    dup[...] = dout * silu
    dgate[...] = dg


# ---- activations, residual, dropout --------------------------------------------------------
def gelu_fwd(out: Array, inp: Array) -> None:
    """GPT-2's tanh-approximated GELU."""
    x = inp
    out[...] = 0.5 * x * (1.0 + np.tanh(GELU_SCALE * (x + 0.044715 * (x * x * x))))


def gelu_bwd(dinp: Array, dout: Array, inp: Array) -> None:
    """dinp = dout * gelu'(inp); dinp may alias dout."""
    x = inp
    t = np.tanh(GELU_SCALE * (x + 0.044715 * (x * x * x)))
    dt = GELU_SCALE * (1.0 + 3 * 0.044715 * x * x)
    dinp[...] = dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dt)


def relu_fwd(out: Array, inp: Array) -> None:
    """out = max(inp, 0)."""
    np.maximum(inp, 0, out=out)


def relu_bwd(dinp: Array, dout: Array, inp: Array) -> None:
    """dinp = dout where inp > 0, else 0; dinp may alias dout."""
    dinp[...] = np.where(inp > 0, dout, 0)


def residual_fwd(out: Array, a: Array, b: Array) -> None:
    """out = a + b."""
    np.add(a, b, out=out)


def dropout_fwd(out: Array, inp: Array, p: float, seed: int) -> None:
    """Inverted dropout with the counter-based mask of dropout_keep_mask."""
    keep = dropout_keep_mask(inp.size, p, seed).reshape(inp.shape)
    out[...] = np.where(keep, inp / (1.0 - p), 0)


def dropout_bwd(dinp: Array, dout: Array, p: float, seed: int) -> None:
    """Backward of dropout_fwd: the same mask, recomputed from the seed."""
    dropout_fwd(dinp, dout, p, seed)


# ---- loss --------------------------------------------------------------------------------
def softmax_xent(losses: Array, dlogits: Array | None, logits: Array, targets: Array,
                 dloss: float) -> None:
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
def sgd_update(params: Array, grads: Array, momentum_buf: Array | None, lr: float,
               momentum: float, weight_decay: float, decay_count: int) -> None:
    """torch.optim.SGD (dampening 0, no Nesterov) with L2 decay on params[:decay_count]."""
    g = grads.copy()
    g[:decay_count] += weight_decay * params[:decay_count]
    if momentum:
        if momentum_buf is None:
            raise ValueError("sgd_update: momentum needs a momentum buffer, got None")
        momentum_buf *= momentum
        momentum_buf += g
        g = momentum_buf
    params -= lr * g


def adam_update(params: Array, grads: Array, m: Array, v: Array, lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float, step: int, decay_count: int,
                decoupled: bool) -> None:
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


def grad_norm_sq(grads: Array) -> float:
    """Sum of squares of a flat buffer in float64, a block at a time (no full-size copy)."""
    g = grads.reshape(-1)
    total = 0.0
    for i in range(0, g.size, NORM_BLOCK):
        block = g[i:i + NORM_BLOCK].astype(np.float64)
        total += float(np.square(block, out=block).sum())
    return total


# ---- the fused decode block (an optional kernel: composed of the layer kernels above) -------
DECODE_BLOCK_PARAMS = ("ln1_w", "ln1_b", "attn_w", "attn_b", "proj_w", "proj_b",
                       "ln2_w", "ln2_b", "fc_w", "fc_b", "fcproj_w", "fcproj_b")
WORK_VIEWS_KEPT = 8  # workspaces whose views decode_block_views keeps (by identity)
_WORK_VIEWS: dict[int, tuple[Array, tuple[int, ...], SimpleNamespace]] = {}


def decode_block_workspace(B: int, Tn: int, C: int, F: int) -> int:
    """Floats of the workspace decode_block needs: N = B*Tn rows times (8C + 2F + 2)."""
    return B * Tn * (8 * C + 2 * F + 2)


def decode_block_views(work: Array, B: int, Tn: int, C: int, F: int) -> SimpleNamespace:
    """The workspace cut into the block's intermediates, in this order: ln (B,Tn,C) for both
    LayerNorms, mean and rstd (N,), qkv (B,Tn,3C), atty, attproj, res2 (B,Tn,C), fch and
    fch_act (B,Tn,F), fcproj (B,Tn,C) (cpp's decode.cpp cuts it the same way).

    The views of the last few workspaces are kept: every decoded token then passes the
    same array objects, which a backend that looks arrays up by identity (wasm) finds in
    its cache instead of locating each new view again (that cost wasm ~20% per token)."""
    key = (B, Tn, C, F)
    known = _WORK_VIEWS.get(id(work))
    if known is not None and known[0] is work and known[1] == key:
        return known[2]
    N, flat = B * Tn, work.reshape(-1)
    sizes = [("ln", C), ("mean", 1), ("rstd", 1), ("qkv", 3 * C), ("atty", C),
             ("attproj", C), ("res2", C), ("fch", F), ("fch_act", F), ("fcproj", C)]
    views, start = {}, 0
    for name, width in sizes:
        part = flat[start:start + N * width]
        views[name] = part if width == 1 else part.reshape(B, Tn, width)
        start += N * width
    if len(_WORK_VIEWS) >= WORK_VIEWS_KEPT:  # bounded: holds at most a few old workspaces
        _WORK_VIEWS.clear()
    _WORK_VIEWS[id(work)] = (work, key, SimpleNamespace(**views))
    return _WORK_VIEWS[id(work)][2]


def compose_decode_block(k: Any, out: Array, x: Array, kcache: Array, vcache: Array,
                         work: Array, params: Sequence[Any], pos: int, n_head: int,
                         activation: str, qtype: str | None = None) -> None:
    """decode_block as the sequence of layer kernels of `k` (a backend or this module), the
    same calls SLLM._forward makes for a decode step; every backend's default."""
    _compose_block(k, out, x, work, params, activation, qtype, "decode_block",
                   lambda atty, qkv: k.attention_decode(atty, qkv, kcache, vcache, pos, n_head))


def compose_decode_block_batch(k: Any, out: Array, x: Array, kcache: Array, vcache: Array,
                               work: Array, params: Sequence[Any], slots: Array,
                               positions: Array, n_head: int, activation: str,
                               qtype: str | None = None) -> None:
    """decode_block_batch as the sequence of layer kernels of `k`: decode_block's, with
    attention_decode_batch for the attention; every backend's default."""
    _compose_block(k, out, x, work, params, activation, qtype, "decode_block_batch",
                   lambda atty, qkv: k.attention_decode_batch(atty, qkv, kcache, vcache, slots,
                                                              positions, n_head))


def _compose_block(k: Any, out: Array, x: Array, work: Array, params: Sequence[Any],
                   activation: str, qtype: str | None, kernel: str,
                   attend: Callable[[Array, Array], None]) -> None:
    """A GPT-2 block of decode rows on `k`'s kernels; attend(atty, qkv) is its attention."""
    ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b = params
    B, Tn, C = x.shape
    F = fc_w.shape[0] if qtype else fc_w.shape[1]  # quantized rows are (F, bytes)
    if activation not in ("gelu", "relu"):
        raise ValueError(f"{kernel}: activation must be 'gelu' or 'relu', got {activation!r}")
    w = decode_block_views(work, B, Tn, C, F)
    # matmul_fwd(out, inp, weight, bias, False), or matmul_q_fwd(..., qtype) on quantized rows
    mm, last = (k.matmul_q_fwd, qtype) if qtype else (k.matmul_fwd, False)
    k.layernorm_fwd(w.ln, w.mean, w.rstd, x, ln1_w, ln1_b)
    mm(w.qkv, w.ln, attn_w, attn_b, last)
    attend(w.atty, w.qkv)
    mm(w.attproj, w.atty, proj_w, proj_b, last)
    k.residual_fwd(w.res2, x, w.attproj)
    k.layernorm_fwd(w.ln, w.mean, w.rstd, w.res2, ln2_w, ln2_b)
    mm(w.fch, w.ln, fc_w, fc_b, last)
    (k.gelu_fwd if activation == "gelu" else k.relu_fwd)(w.fch_act, w.fch)
    mm(w.fcproj, w.fch_act, fcproj_w, fcproj_b, last)
    k.residual_fwd(out, w.res2, w.fcproj)


# ---- the fused llama decode block (optional: composed of the llama layer kernels) ---------
LLAMA_DECODE_BLOCK_PARAMS = ("ln1_w", "qkv_w", "o_w", "ln2_w", "gate_w", "up_w", "down_w")


def llama_decode_block_workspace(B: int, Tn: int, C: int, F: int) -> int:
    """Floats of the workspace llama_decode_block needs: N = B*Tn rows times (8C + 3F + 2)."""
    return B * Tn * (8 * C + 3 * F + 2)


def llama_decode_block_views(work: Array, B: int, Tn: int, C: int, F: int,
                             W: int) -> SimpleNamespace:
    """The workspace cut into the llama block's intermediates, in this order: ln (B,Tn,C) for
    both RMSNorms, rstd (N,), positions (N,) int32, qkv (B,Tn,W) in a slot 3C wide, atty,
    attproj, res2 (B,Tn,C), gate, up, hact (B,Tn,F), down (B,Tn,C) (wasm/decode.c cuts it
    the same way)."""
    N, flat = B * Tn, work.reshape(-1)
    sizes = [("ln", C), ("rstd", 1), ("positions", 1), ("qkv", 3 * C), ("atty", C),
             ("attproj", C), ("res2", C), ("gate", F), ("up", F), ("hact", F), ("down", C)]
    views, start = {}, 0
    for name, width in sizes:
        part = flat[start:start + N * width]
        if name == "qkv":
            part = part[:N * W]
        views[name] = part if width == 1 else part.reshape(B, Tn, W if name == "qkv" else width)
        start += N * width
    views["positions"] = views["positions"].view(np.int32)
    views["qkv_rows"] = views["qkv"].reshape(N, W)
    return SimpleNamespace(**views)


def compose_llama_decode_block(k: Any, out: Array, x: Array, kcache: Array, vcache: Array,
                               work: Array, params: Sequence[Any], pos: int, n_head: int,
                               n_kv_head: int, ffn_dim: int, theta: float, eps: float,
                               qtype: str | None = None) -> None:
    """llama_decode_block as the sequence of llama layer kernels of `k` (a backend or this
    module), the same calls sllm.llama makes for a decode step; every backend's default."""
    B, Tn, C = x.shape
    w = llama_decode_block_views(work, B, Tn, C, ffn_dim, (n_head + 2 * n_kv_head) * (C // n_head))
    w.positions.reshape(B, Tn)[...] = np.arange(pos, pos + Tn, dtype=np.int32)
    _compose_llama_block(k, out, x, w, params, w.positions, n_head, n_kv_head, theta, eps,
                         qtype, lambda: k.attention_decode(w.atty, w.qkv, kcache, vcache, pos,
                                                           n_head, n_kv_head))


def compose_llama_decode_block_batch(k: Any, out: Array, x: Array, kcache: Array,
                                     vcache: Array, work: Array, params: Sequence[Any],
                                     slots: Array, positions: Array, n_head: int,
                                     n_kv_head: int, ffn_dim: int, theta: float, eps: float,
                                     qtype: str | None = None) -> None:
    """llama_decode_block_batch as the sequence of llama layer kernels of `k`:
    llama_decode_block's, each row rotated at its own position, with attention_decode_batch;
    every backend's default."""
    B, _, C = x.shape
    w = llama_decode_block_views(work, B, 1, C, ffn_dim, (n_head + 2 * n_kv_head) * (C // n_head))
    _compose_llama_block(k, out, x, w, params, positions, n_head, n_kv_head, theta, eps, qtype,
                         lambda: k.attention_decode_batch(w.atty, w.qkv, kcache, vcache, slots,
                                                          positions, n_head, n_kv_head))


def _compose_llama_block(k: Any, out: Array, x: Array, w: SimpleNamespace,
                         params: Sequence[Any], positions: Array, n_head: int, n_kv_head: int,
                         theta: float, eps: float, qtype: str | None,
                         attend: Callable[[], None]) -> None:
    """A llama block of decode rows on `k`'s kernels into the views `w`; attend() is its
    attention (w.qkv into w.atty)."""
    ln1_w, qkv_w, o_w, ln2_w, gate_w, up_w, down_w = params

    def mm(o: Array, inp: Array, weight: Any) -> None:
        if qtype:
            k.matmul_q_fwd(o, inp, weight, None, qtype)
        else:
            k.matmul_fwd(o, inp, weight, None, False)
    k.rmsnorm_fwd(w.ln, w.rstd, x, ln1_w, eps)
    mm(w.qkv, w.ln, qkv_w)
    k.rope_fwd(w.qkv_rows, positions, n_head, n_kv_head, theta)
    attend()
    mm(w.attproj, w.atty, o_w)
    k.residual_fwd(w.res2, x, w.attproj)
    k.rmsnorm_fwd(w.ln, w.rstd, w.res2, ln2_w, eps)
    mm(w.gate, w.ln, gate_w)
    mm(w.up, w.ln, up_w)
    k.swiglu_fwd(w.hact, w.gate, w.up)
    mm(w.down, w.hact, down_w)
    k.residual_fwd(out, w.res2, w.down)


def llama_decode_block(out: Array, x: Array, kcache: Array, vcache: Array, work: Array,
                       params: Sequence[Any], pos: int, n_head: int, n_kv_head: int,
                       ffn_dim: int, theta: float, eps: float, qtype: str | None = None) -> None:
    """One llama block over new decode rows (see base.Backend.llama_decode_block)."""
    compose_llama_decode_block(sys.modules[__name__], out, x, kcache, vcache, work, params,
                               pos, n_head, n_kv_head, ffn_dim, theta, eps, qtype)


def llama_decode_block_batch(out: Array, x: Array, kcache: Array, vcache: Array, work: Array,
                             params: Sequence[Any], slots: Array, positions: Array,
                             n_head: int, n_kv_head: int, ffn_dim: int, theta: float,
                             eps: float, qtype: str | None = None) -> None:
    """One llama block over a continuous-batching step (see
    base.Backend.llama_decode_block_batch)."""
    compose_llama_decode_block_batch(sys.modules[__name__], out, x, kcache, vcache, work,
                                     params, slots, positions, n_head, n_kv_head, ffn_dim,
                                     theta, eps, qtype)


def decode_block(out: Array, x: Array, kcache: Array, vcache: Array, work: Array,
                 params: Sequence[Any], pos: int, n_head: int, activation: str,
                 qtype: str | None = None) -> None:
    """One transformer block over new decode rows (see base.Backend.decode_block)."""
    compose_decode_block(sys.modules[__name__], out, x, kcache, vcache, work, params, pos,
                         n_head, activation, qtype)


def decode_block_batch(out: Array, x: Array, kcache: Array, vcache: Array, work: Array,
                       params: Sequence[Any], slots: Array, positions: Array, n_head: int,
                       activation: str, qtype: str | None = None) -> None:
    """One transformer block over a continuous-batching step (see
    base.Backend.decode_block_batch)."""
    compose_decode_block_batch(sys.modules[__name__], out, x, kcache, vcache, work, params,
                               slots, positions, n_head, activation, qtype)
