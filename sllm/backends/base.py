"""The Backend contract: storage, a table of layer-grain kernels, and capabilities.

A backend owns the memory of a model (parameters, gradients, optimizer state and
activations are arrays it hands out: plain float32 numpy arrays, or numpy views into
memory it owns, such as WebAssembly linear memory) and implements the kernels below on
those arrays. Kernels work at the grain of llm.c's layers: one call per layer, never per
tiny op, so a fast backend pays one boundary crossing per layer.

Conventions, as in llm.c: outputs first, then inputs, then weights, then sizes/options.
Shapes use N = B*T rows; C width; OC output width; H heads; V vocabulary. Arrays are
C-contiguous. "+=" marks outputs a kernel accumulates into (parameter gradients, and the
residual-stream gradient in layernorm_bwd); every other output is overwritten.

A backend may leave any kernel to the numpy reference by naming it in
`reference_kernels`: since every backend's arrays are numpy arrays, the reference runs on
them directly. `sllm.backends.info()` lists which kernels each backend leaves.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

# Every kernel of the contract, in the order a training step uses them.
KERNELS: tuple[str, ...] = (
    "encoder_fwd", "encoder_bwd",
    "layernorm_fwd", "layernorm_bwd",
    "matmul_fwd", "matmul_bwd",
    "attention_fwd", "attention_bwd", "attention_decode", "attention_decode_batch",
    "gelu_fwd", "gelu_bwd", "relu_fwd", "relu_bwd",
    "residual_fwd",
    "dropout_fwd", "dropout_bwd",
    "softmax_xent",
    "sgd_update", "adam_update",
)

LAYERNORM_EPS = 1e-5


def _required(name: str, doc: str):
    def kernel(self, *args, **kwargs):
        raise NotImplementedError(f"backend {self.name!r} does not implement kernel {name!r}")
    kernel.__name__ = name
    kernel.__doc__ = doc
    return kernel


class Backend:
    """Base class of every backend: storage methods plus the kernel table.

    Subclasses set `name` and `priority` (higher wins under backend="auto"), override
    `probe()` to check that they can run here, and implement the kernels or list them
    in `reference_kernels`.
    """

    name: ClassVar[str] = "base"
    priority: ClassVar[int] = 0
    reference_kernels: ClassVar[frozenset[str]] = frozenset()
    dtype: np.dtype = np.dtype(np.float32)

    def __init__(self) -> None:
        if self.reference_kernels:
            from . import numpy_ref
            for kernel in self.reference_kernels:
                setattr(self, kernel, getattr(numpy_ref, kernel))

    # ---- discovery -------------------------------------------------------------------
    @classmethod
    def probe(cls) -> dict[str, Any]:
        """Check this backend can run here; return its capabilities or raise with the reason."""
        return {}

    @property
    def capabilities(self) -> dict[str, Any]:
        """Capabilities of this instance (SIMD level, threads, runtime...)."""
        return self.probe()

    def set_num_threads(self, n: int) -> None:
        """Optional: use n threads in kernels. The default backend is single-purpose and ignores it."""

    # ---- storage ---------------------------------------------------------------------
    def empty(self, shape: "int | tuple[int, ...]", dtype: Any = None) -> np.ndarray:
        """A new uninitialised array owned by this backend (float by default)."""
        return np.empty(shape, dtype=self.dtype if dtype is None else dtype)

    def zeros(self, shape: "int | tuple[int, ...]", dtype: Any = None) -> np.ndarray:
        """A new zero-filled array owned by this backend."""
        out = self.empty(shape, dtype)
        out.fill(0)
        return out

    def from_numpy(self, array: np.ndarray, dtype: Any = None) -> np.ndarray:
        """A backend-owned copy of `array`."""
        out = self.empty(array.shape, dtype if dtype is not None else self.dtype)
        out[...] = array
        return out

    def free(self, array: np.ndarray) -> None:
        """Optional: give an array's memory back. Arrays must not be used afterwards."""

    # ---- kernels (documented here; the reference is sllm/backends/numpy_ref.py) --------
    encoder_fwd = _required("encoder_fwd", """encoder_fwd(out (B,T,C), tokens (B,T) int32, wte (V,C), wpe (maxT,C), pos):
    out[b,t] = wte[tokens[b,t]] + wpe[pos+t].""")
    encoder_bwd = _required("encoder_bwd", """encoder_bwd(dwte +=, dwpe +=, dout (B,T,C), tokens (B,T), pos).""")
    layernorm_fwd = _required("layernorm_fwd", """layernorm_fwd(out (N,C), mean (N,), rstd (N,), inp (N,C), weight (C,), bias (C,)).""")
    layernorm_bwd = _required("layernorm_bwd", """layernorm_bwd(dinp +=, dweight +=, dbias +=, dout, inp, weight, mean, rstd).""")
    matmul_fwd = _required("matmul_fwd", """matmul_fwd(out (N,OC), inp (N,C), weight, bias (OC,) or None, trans_w=False):
    out = inp @ weight + bias; weight is (C,OC), or (OC,C) used transposed if trans_w.""")
    matmul_bwd = _required("matmul_bwd", """matmul_bwd(dinp or None, dweight +=, dbias += or None, dout (N,OC), inp (N,C), weight,
    trans_w=False): dinp = dout @ weight^T (overwritten).""")
    attention_fwd = _required("attention_fwd", """attention_fwd(out (B,T,C), saved, qkv (B,T,3C), n_head): causal softmax(QK^T/sqrt(D))V
    per head; `saved` has the backend's attention_saved_shape and keeps what backward needs.""")
    attention_bwd = _required("attention_bwd", """attention_bwd(dqkv (B,T,3C), dout (B,T,C), qkv, out (B,T,C), saved, n_head).""")
    attention_decode = _required("attention_decode", """attention_decode(out (B,Tn,C), qkv (B,Tn,3C), kcache (B,H,maxT,D), vcache, pos, n_head):
    stores the new keys/values at positions pos..pos+Tn-1, then attends causally.""")
    attention_decode_batch = _required("attention_decode_batch", """attention_decode_batch(out (B,1,C), qkv (B,1,3C), kcache (S,H,maxT,D), vcache,
    slots (B,) int32, positions (B,) int32, n_head): continuous batching, one new position
    per sequence: row b stores its key/value in cache slot slots[b] at positions[b], then
    attends over positions 0..positions[b] of that slot. Slots are distinct; row b's output
    equals attention_decode on slot slots[b] alone (B = Tn = 1, pos = positions[b]).""")
    gelu_fwd = _required("gelu_fwd", """gelu_fwd(out, inp): GPT-2's tanh approximation, elementwise.""")
    gelu_bwd = _required("gelu_bwd", """gelu_bwd(dinp, dout, inp): dinp may alias dout.""")
    relu_fwd = _required("relu_fwd", """relu_fwd(out, inp).""")
    relu_bwd = _required("relu_bwd", """relu_bwd(dinp, dout, inp): dinp may alias dout.""")
    residual_fwd = _required("residual_fwd", """residual_fwd(out, a, b): out = a + b.""")
    dropout_fwd = _required("dropout_fwd", """dropout_fwd(out, inp, p, seed): out = inp * keep / (1-p), keep from dropout_keep_mask;
    out may alias inp.""")
    dropout_bwd = _required("dropout_bwd", """dropout_bwd(dinp, dout, p, seed): the same mask, recomputed; dinp may alias dout.""")
    softmax_xent = _required("softmax_xent", """softmax_xent(losses (N,), dlogits (N,V) or None, logits (N,V), targets (N,) int32, dloss):
    losses = -log softmax(logits)[target] (0 where target == -1); dlogits = dloss *
    (softmax - onehot) (0 rows where target == -1); dlogits may alias logits.""")
    sgd_update = _required("sgd_update", """sgd_update(params, grads, momentum_buf, lr, momentum, weight_decay, decay_count):
    torch.optim.SGD over a flat buffer; weight decay (L2) applies to [0, decay_count).""")
    adam_update = _required("adam_update", """adam_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step, decay_count,
    decoupled): torch Adam (decoupled=False, L2 in the gradient) or AdamW (True).""")

    def attention_saved_shape(self, B: int, T: int, n_head: int) -> tuple[int, ...]:
        """Shape of the state attention_fwd saves for backward (reference: the probabilities)."""
        return (B, n_head, T, T)

    def missing_kernels(self) -> list[str]:
        """Kernels this backend neither implements nor leaves to the reference."""
        return [k for k in KERNELS if getattr(type(self), k) is getattr(Backend, k)
                and k not in self.reference_kernels]


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
