"""The shapes a model of a given config hands each kernel at batch B, length T: what
`sllm bench` times kernel by kernel. A kernel without an entry is timed on its largest
conformance case (sllm/backends/cases.py).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .backends.cases import CASES, case_label

Shapes = list[tuple[str, dict[str, Any]]]


def _sizes(cfg: Any, B: int, T: int) -> tuple[int, int, int, int, int]:
    """N = B*T rows, C, F, V, H of a model config."""
    return B * T, cfg.embedding_dim, cfg.ffn_hidden_dim, cfg.vocab_size, cfg.num_heads


def _enc_m(cfg: Any, B: int, T: int) -> Shapes:
    return [(f"B{B} T{T}", dict(B=B, T=T, V=cfg.vocab_size, C=cfg.embedding_dim, pos=0))]


def _ln_m(cfg: Any, B: int, T: int) -> Shapes:
    N, C, *_ = _sizes(cfg, B, T)
    return [(f"{N}x{C}", dict(N=N, C=C))]


def _gemms(cfg: Any, B: int, T: int) -> list[tuple[str, int, int, int]]:
    N, C, F, V, _ = _sizes(cfg, B, T)
    return [("qkv", N, C, 3 * C), ("fc", N, C, F), ("fc_proj", N, F, C), ("lm_head", N, C, V)]


def _mm_m(cfg: Any, B: int, T: int) -> Shapes:
    return [(f"{label} {N}x{K}x{M}", dict(N=N, C=K, OC=M, bias=True, trans_w=False))
            for label, N, K, M in _gemms(cfg, B, T)]


def _mmq_m(cfg: Any, B: int, T: int) -> Shapes:
    # a training-batch GEMM, and the GEMV of one decoded token through the output layer
    N, C, F, V, _ = _sizes(cfg, B, T)
    return [(f"q8_0 {label} {n}x{K}x{M}", dict(N=n, K=K, OC=M, qtype="q8_0", bias=True,
                                                packed=True))
            for label, n, K, M in (("fc", N, C, F), ("lm_head decode", 1, C, V))]


def _att_m(cfg: Any, B: int, T: int) -> Shapes:
    H = cfg.num_heads
    return [(f"B{B} T{T} H{H}", dict(B=B, T=T, H=H, D=cfg.embedding_dim // H))]


def _dec_m(cfg: Any, B: int, T: int) -> Shapes:
    H = cfg.num_heads
    return [(f"B1 pos{T - 1} H{H}", dict(B=1, H=H, D=cfg.embedding_dim // H, Tn=1, pos=T - 1,
                                          maxT=T))]


def _decb_m(cfg: Any, B: int, T: int) -> Shapes:
    H = cfg.num_heads
    positions = tuple((T - 1 - 7 * i) % T for i in range(B))  # sequences at mixed lengths
    return [(f"{B} sequences maxT{T} H{H}", dict(S=B, H=H, D=cfg.embedding_dim // H, maxT=T,
                                                  slots=tuple(range(B)), positions=positions))]


def _dblk_m(cfg: Any, B: int, T: int) -> Shapes:
    H, act = cfg.num_heads, cfg.activation
    return [(f"B1 pos{T - 1} H{H} {act}", dict(B=1, Tn=1, H=H, D=cfg.embedding_dim // H,
                                               F=cfg.ffn_hidden_dim, pos=T - 1, maxT=T,
                                               qtype=None, act=act))]


def _dbb_m(cfg: Any, B: int, T: int) -> Shapes:
    H, act, n = cfg.num_heads, cfg.activation, min(B, 16)
    positions = tuple((T - 1 - 7 * i) % T for i in range(n))  # sequences at mixed lengths
    return [(f"{n} sequences maxT{T} H{H} {act}",
             dict(S=n, H=H, D=cfg.embedding_dim // H, F=cfg.ffn_hidden_dim, maxT=T,
                  slots=tuple(range(n)), positions=positions, qtype=None, act=act))]


def _ldb_m(cfg: Any, B: int, T: int) -> Shapes:
    H, Hkv = cfg.num_heads, getattr(cfg, "kv_heads", cfg.num_heads)
    return [(f"B1 pos{T - 1} H{H} Hkv{Hkv}",
             dict(B=1, Tn=1, H=H, Hkv=Hkv, D=cfg.embedding_dim // H, F=cfg.ffn_hidden_dim,
                  pos=T - 1, maxT=T, qtype=None))]


def _rms_m(cfg: Any, B: int, T: int) -> Shapes:
    N, C, *_ = _sizes(cfg, B, T)
    return [(f"{N}x{C}", dict(N=N, C=C, eps=getattr(cfg, "norm_eps", 1e-5)))]


def _rope_m(cfg: Any, B: int, T: int) -> Shapes:
    H, Hkv = cfg.num_heads, getattr(cfg, "kv_heads", cfg.num_heads)
    return [(f"{B * T} rows H{H} Hkv{Hkv}", dict(N=B * T, H=H, Hkv=Hkv, D=cfg.head_dim, pos0=0,
                                                 theta=getattr(cfg, "rope_theta", 10000.0)))]


def _swiglu_m(cfg: Any, B: int, T: int) -> Shapes:
    N, _, F, *_ = _sizes(cfg, B, T)
    return [(f"{N}x{F}", dict(N=N, F=F))]


def _ffn_m(cfg: Any, B: int, T: int) -> Shapes:
    N, _, F, *_ = _sizes(cfg, B, T)
    return [(f"{N}x{F}", dict(n=N * F))]


def _res_m(cfg: Any, B: int, T: int) -> Shapes:
    N, C, *_ = _sizes(cfg, B, T)
    return [(f"{N}x{C}", dict(n=N * C))]


def _drop_m(cfg: Any, B: int, T: int) -> Shapes:
    N, C, *_ = _sizes(cfg, B, T)
    p = cfg.dropout or 0.1
    return [(f"{N}x{C} p={p:g}", dict(n=N * C, p=p, seed=1))]


def _xent_m(cfg: Any, B: int, T: int) -> Shapes:
    N, _, _, V, _ = _sizes(cfg, B, T)
    return [(f"{N}x{V}", dict(N=N, V=V, with_grad=True))]


def _sgd_m(cfg: Any, B: int, T: int) -> Shapes:
    n = cfg.num_parameters()
    return [(f"{n} params momentum", dict(n=n, momentum=0.9))]


def _adam_m(cfg: Any, B: int, T: int) -> Shapes:
    n = cfg.num_parameters()
    return [(f"{n} params AdamW", dict(n=n, decoupled=True, step=3))]


def _norm_m(cfg: Any, B: int, T: int) -> Shapes:
    n = cfg.num_parameters()
    return [(f"{n} params", dict(n=n))]


MODEL_SHAPES: dict[str, Callable[[Any, int, int], Shapes]] = {
    "encoder_fwd": _enc_m,
    "encoder_bwd": _enc_m,
    "layernorm_fwd": _ln_m,
    "layernorm_bwd": _ln_m,
    "matmul_fwd": _mm_m,
    "matmul_bwd": _mm_m,
    "matmul_q_fwd": _mmq_m,
    "attention_fwd": _att_m,
    "attention_bwd": _att_m,
    "attention_decode": _dec_m,
    "attention_decode_batch": _decb_m,
    "decode_block": _dblk_m,
    "decode_block_batch": _dbb_m,
    "llama_decode_block": _ldb_m,
    "rmsnorm_fwd": _rms_m,
    "rmsnorm_bwd": _rms_m,
    "rope_fwd": _rope_m,
    "rope_bwd": _rope_m,
    "swiglu_fwd": _swiglu_m,
    "swiglu_bwd": _swiglu_m,
    "gelu_fwd": _ffn_m,
    "gelu_bwd": _ffn_m,
    "relu_fwd": _ffn_m,
    "relu_bwd": _ffn_m,
    "residual_fwd": _res_m,
    "dropout_fwd": _drop_m,
    "dropout_bwd": _drop_m,
    "softmax_xent": _xent_m,
    "sgd_update": _sgd_m,
    "adam_update": _adam_m,
    "grad_norm_sq": _norm_m,
}


def shapes_for(kernel: str, cfg: Any, B: int, T: int) -> Shapes:
    """(label, shape) pairs a model of config cfg uses at batch B, length T; without an
    entry in MODEL_SHAPES, the kernel's largest conformance case."""
    if kernel in MODEL_SHAPES:
        return MODEL_SHAPES[kernel](cfg, B, T)
    _, shape = CASES[kernel].largest()
    return [(case_label(shape), shape)]
