"""The Backend contract: storage, the layer-grain kernels with their signatures, capabilities.

A backend owns the memory of a model (parameters, gradients, optimizer state and
activations are arrays it hands out: plain float32 numpy arrays, or numpy views into
memory it owns, such as WebAssembly linear memory) and implements the kernels below on
those arrays. Kernels work at the grain of llm.c's layers: one call per layer, never per
tiny op, so a fast backend pays one boundary crossing per layer.

Conventions, as in llm.c: outputs first, then inputs, then weights, then sizes/options.
Shapes use N = B*T rows; C width; OC output width; H heads; V vocabulary. Arrays are
C-contiguous. "+=" marks outputs a kernel accumulates into (parameter gradients, and the
residual-stream gradient in layernorm_bwd); every other output is overwritten.

`Backend` declares every kernel as a method with its real signature; the declaration
raises NotImplementedError naming the kernel. A backend provides each kernel in one of
three ways, all resolved once, when its class is created (`Backend.__init_subclass__`):
  1. a method of the class body (the wasm backends);
  2. `kernel_module`: a module (or any object) holding functions named after the kernels,
     bound as static methods so a call costs no extra Python frame (cpp: the compiled
     extension; numpy: sllm.backends.reference);
  3. `reference_kernels`: names left to the numpy reference (sllm/backends/reference.py);
     since every backend's arrays are numpy arrays, the reference runs on them directly.
A backend that leaves a kernel unprovided is refused when it is registered: listed as
unavailable, with the missing kernels named. `sllm check-backend NAME` checks every kernel
against the reference.

Adding a kernel to the contract, every step (tests/test_kernel_inventory.py fails when one
is left out):
  1. declare it below (signature and docstring) and add its name to KERNELS, LLAMA_KERNELS
     or OPTIONAL_KERNELS;
  2. the numpy version in reference.py, the oracle every backend is checked against;
  3. conformance cases in cases.py (awkward shapes; fwd and bwd), and the shapes a model
     hands it in sllm/bench_shapes.py, which `sllm bench` times;
  4. cpp: the C++ function declared in cpp/kernels.h (or the header of its concern), bound
     in cpp/bindings.cpp (or a *_bindings.cpp), its signature in sllm/_cpp.pyi;
  5. wasm: the C kernel as EXPORT(name) in wasm/*.c, its wrapper method in wasm.py, and its
     argument slots in docs/wasm-abi.md, the ABI both hosts follow;
  6. the browser: when the in-browser model needs it, model.js calls it through the kernel
     host of kernels.js (the JavaScript twin of wasm.py), with the same slots.
A backend that does not implement it yet lists it in its `reference_kernels` instead of
steps 4 or 5, and the numpy reference runs it there.

The llama kernels (LLAMA_KERNELS: RMSNorm, rotary embeddings, SwiGLU) are required only
to build a llama-family model: a backend without them still registers and runs GPT-2
models, and building a llama model on it raises BackendError naming what it lacks
(`missing_llama_kernels`). Grouped-query attention is no separate kernel: the four
attention kernels take `n_kv_head` (None = n_head, the GPT-2 call).

Optional kernels (OPTIONAL_KERNELS) are fusions of required ones. `Backend` gives each a
working default built from the backend's own required kernels, so a backend (or plugin)
that does not know them still runs and `missing_kernels` never names them; a backend
overrides one in any of the three ways above to save the calls in between (cpp runs the
whole GPT-2 decode block in one C++ call, the wasm modules a GPT-2 or llama block in
one export call).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ..quant import column_slices, dequantize
from . import reference
from .reference import (
    DECODE_BLOCK_PARAMS,
    LAYERNORM_EPS,
    LLAMA_DECODE_BLOCK_PARAMS,
    compose_decode_block,
    compose_decode_block_batch,
    compose_llama_decode_block,
    compose_llama_decode_block_batch,
    decode_block_workspace,
    dropout_keep_mask,
    dropout_threshold,
    llama_decode_block_workspace,
)

__all__ = ["DECODE_BLOCK_PARAMS", "KERNELS", "LAYERNORM_EPS", "LLAMA_DECODE_BLOCK_PARAMS",
           "LLAMA_KERNELS", "OPTIONAL_KERNELS", "Array",
           "Backend", "decode_block_workspace", "dropout_keep_mask", "dropout_threshold",
           "llama_decode_block_workspace"]

Array = np.ndarray

# Every kernel of the contract, in the order a training step uses them.
KERNELS: tuple[str, ...] = (
    "encoder_fwd", "encoder_bwd",
    "layernorm_fwd", "layernorm_bwd",
    "matmul_fwd", "matmul_bwd", "matmul_q_fwd",
    "attention_fwd", "attention_bwd", "attention_decode", "attention_decode_batch",
    "gelu_fwd", "gelu_bwd", "relu_fwd", "relu_bwd",
    "residual_fwd",
    "dropout_fwd", "dropout_bwd",
    "softmax_xent",
    "sgd_update", "adam_update", "grad_norm_sq",
)

# Kernels only the llama family uses: required to build a llama model, not to register.
LLAMA_KERNELS: tuple[str, ...] = (
    "rmsnorm_fwd", "rmsnorm_bwd", "rope_fwd", "rope_bwd", "swiglu_fwd", "swiglu_bwd",
)

# Fused kernels a backend may provide; Backend's default composes the required ones.
OPTIONAL_KERNELS: tuple[str, ...] = ("decode_block", "decode_block_batch", "llama_decode_block",
                                      "llama_decode_block_batch", "embed_q_fwd", "encoder_q_fwd",
                                      "matmul_q_bwd")


def _not_implemented(backend: Any, kernel: str) -> NotImplementedError:
    """The error a declared but unprovided kernel raises."""
    return NotImplementedError(f"backend {backend.name!r} does not implement kernel {kernel!r}")


class Backend:
    """Base class of every backend: storage methods plus the kernel contract.

    Subclasses set `name` and `priority` (higher wins under backend="auto"), override
    `probe()` to check that they can run here, and provide every kernel (see the module
    docstring for the three ways).
    """

    name: ClassVar[str] = "base"
    priority: ClassVar[int] = 0
    reference_kernels: ClassVar[frozenset[str]] = frozenset()
    kernel_module: ClassVar[Any] = None
    dtype: np.dtype = np.dtype(np.float32)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Attach the kernels this class takes from `reference_kernels` or `kernel_module`."""
        super().__init_subclass__(**kwargs)
        # Names this version does not know are ignored: a plugin written for a later
        # contract still loads, and a misspelt name shows up as a missing kernel.
        own = vars(cls)
        for kernel in KERNELS + LLAMA_KERNELS + OPTIONAL_KERNELS:
            if kernel in own:  # a method of this class body
                continue
            if kernel in cls.reference_kernels:
                setattr(cls, kernel, staticmethod(getattr(reference, kernel)))
            elif "kernel_module" in own and hasattr(cls.kernel_module, kernel):
                setattr(cls, kernel, staticmethod(getattr(cls.kernel_module, kernel)))

    @classmethod
    def missing_kernels(cls) -> list[str]:
        """Kernels this backend neither implements nor leaves to the reference (never an
        optional kernel: those have working defaults)."""
        return [k for k in KERNELS if getattr(cls, k) is getattr(Backend, k)]

    @classmethod
    def missing_llama_kernels(cls) -> list[str]:
        """The LLAMA_KERNELS this backend lacks ([] when it can build llama models)."""
        return [k for k in LLAMA_KERNELS if getattr(cls, k) is getattr(Backend, k)]

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
    def empty(self, shape: int | tuple[int, ...], dtype: Any = None) -> np.ndarray:
        """A new uninitialised array owned by this backend (float by default)."""
        return np.empty(shape, dtype=self.dtype if dtype is None else dtype)

    def zeros(self, shape: int | tuple[int, ...], dtype: Any = None) -> np.ndarray:
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

    def pack_q(self, wq: np.ndarray, qtype: str) -> Any:
        """Quantized rows `wq` as this backend's kernels read them fastest (optional).

        matmul_q_fwd, matmul_q_bwd and decode_block accept what this returns wherever they
        accept ggml's rows; a model packs its quantized weights once, when it is quantized
        or loaded. The default keeps ggml's rows (wq itself); cpp interleaves rows for its
        SIMD tier, the wasm modules four rows with float32 scales (wasm.PackedQ).
        """
        return wq

    def unpack_q(self, packed: Any, qtype: str) -> np.ndarray:
        """ggml's rows back from what pack_q returned, byte for byte (saving, exporting and
        the default embed_q_fwd read them; a model keeps only the packed copy). The default
        is pack_q's: the rows themselves."""
        return packed

    def pack_weight(self, weight: np.ndarray, trans_w: bool = False) -> Any:
        """A float matmul weight as this backend multiplies a few rows by it fastest
        (optional): a batched decode step multiplies the same weights every step.

        matmul_fwd (with the same trans_w), decode_block and decode_block_batch accept what
        this returns wherever they accept the weight, with the same results. The weight
        itself must not change while the packed form is in use (a model packs its weights
        on its first KV-cache step, prefill or decode, and drops them when the weights may
        change). The default is the weight itself; cpp copies it into its GEMM's column
        panels.
        """
        return weight

    def attention_saved_shape(self, B: int, T: int, n_head: int) -> tuple[int, ...]:
        """Shape of the state attention_fwd saves for backward (reference: the probabilities)."""
        return (B, n_head, T, T)

    # ---- kernels: the contract (numpy versions in reference.py) ------------------------
    def encoder_fwd(self, out: Array, tokens: Array, wte: Array, wpe: Array,
                    pos: int = 0) -> None:
        """Token plus position embedding.

        out (B,T,C); tokens (B,T) int32 in [0, V); wte (V,C); wpe (maxT,C).
        out[b,t] = wte[tokens[b,t]] + wpe[pos+t].
        """
        raise _not_implemented(self, "encoder_fwd")

    def encoder_bwd(self, dwte: Array, dwpe: Array, dout: Array, tokens: Array,
                    pos: int = 0) -> None:
        """Backward of encoder_fwd.

        dwte (V,C) +=: dout summed per token id (repeats add up); dwpe (maxT,C) +=:
        dout summed over the batch into rows pos..pos+T-1; dout (B,T,C); tokens (B,T).
        """
        raise _not_implemented(self, "encoder_bwd")

    def layernorm_fwd(self, out: Array, mean: Array, rstd: Array, inp: Array,
                      weight: Array, bias: Array) -> None:
        """LayerNorm over the last axis (eps = LAYERNORM_EPS).

        out (N,C); mean (N,) and rstd (N,) = 1/sqrt(var + eps), saved for backward;
        inp (N,C); weight (C,); bias (C,).
        """
        raise _not_implemented(self, "layernorm_fwd")

    def layernorm_bwd(self, dinp: Array, dweight: Array, dbias: Array, dout: Array,
                      inp: Array, weight: Array, mean: Array, rstd: Array) -> None:
        """Backward of layernorm_fwd; accumulates into dinp (N,C), dweight (C,), dbias (C,).

        dout (N,C); inp (N,C); weight (C,); mean, rstd (N,) as saved by layernorm_fwd.
        """
        raise _not_implemented(self, "layernorm_bwd")

    def matmul_fwd(self, out: Array, inp: Array, weight: Array, bias: Array | None,
                   trans_w: bool = False) -> None:
        """out (N,OC) = inp (N,C) @ weight + bias.

        weight is (C,OC), or (OC,C) used transposed when trans_w (the tied lm_head), or
        what this backend's pack_weight made of such a weight (with the same trans_w);
        bias (OC,) or None.
        """
        raise _not_implemented(self, "matmul_fwd")

    def matmul_bwd(self, dinp: Array | None, dweight: Array, dbias: Array | None,
                   dout: Array, inp: Array, weight: Array, trans_w: bool = False) -> None:
        """Backward of matmul_fwd.

        dinp (N,C) = dout @ weight^T, overwritten (skipped when None); dweight += inp^T @
        dout (its transpose when trans_w); dbias (OC,) += column sums of dout (or None);
        dout (N,OC); inp (N,C).
        """
        raise _not_implemented(self, "matmul_bwd")

    def matmul_q_fwd(self, out: Array, inp: Array, wq: Array, bias: Array | None,
                     qtype: str) -> None:
        """out (N,OC) = inp (N,K) @ W^T + bias, W (OC,K) held as quantized rows (inference).

        wq uint8 (OC, bytes_per_row): rows of ggml blocks of 32 along K, qtype "q8_0",
        "q4_0" or "q4_1" (layouts in sllm/quant.py; K % 32 != 0 is zero-padded). inp is
        quantized on the fly to q8_0 blocks (d = amax/127 rounded to float16, q =
        roundf(x/d)); each block's integer dot product is summed in int32 and scaled by
        d_w * d_x in float32 (q4_1 adds m_w * d_x * sum(q_x)), as ggml's
        vec_dot_{q8_0,q4_0,q4_1}_q8_0. bias (OC,) or None.
        """
        raise _not_implemented(self, "matmul_q_fwd")

    def attention_fwd(self, out: Array, saved: Array, qkv: Array, n_head: int,
                      n_kv_head: int | None = None) -> None:
        """Causal multi-head attention: per head softmax(Q K^T / sqrt(D) + mask) V.

        out (B,T,H*D); qkv (B,T,(H+2*Hkv)*D) with columns [Q (H*D) | K (Hkv*D) | V (Hkv*D)],
        head h at h*D:(h+1)*D of each block; Hkv = n_kv_head (None: n_head, GPT-2's
        (B,T,3C)) divides H, and query head h attends with KV head h // (H/Hkv) (grouped-
        query attention, Hugging Face's repeat_kv); scale 1/sqrt(D). saved has this
        backend's attention_saved_shape and keeps what backward needs (the reference keeps
        the probabilities (B,H,T,T); given a (B,H,T) array it keeps each row's logsumexp).
        """
        raise _not_implemented(self, "attention_fwd")

    def attention_bwd(self, dqkv: Array, dout: Array, qkv: Array, out: Array, saved: Array,
                      n_head: int, n_kv_head: int | None = None) -> None:
        """Backward of attention_fwd: dqkv (B,T,(H+2*Hkv)*D), overwritten (dK and dV of a KV
        head sum over the query heads it serves); dout, out (B,T,H*D)."""
        raise _not_implemented(self, "attention_bwd")

    def attention_decode(self, out: Array, qkv: Array, kcache: Array, vcache: Array,
                         pos: int, n_head: int, n_kv_head: int | None = None) -> None:
        """Incremental attention with a KV cache (generation).

        Stores the new keys and values of qkv (B,Tn,(H+2*Hkv)*D) at positions pos..pos+Tn-1
        of kcache, vcache (B,Hkv,maxT,D) (the cache holds the KV heads only), then attends
        causally over positions 0..pos+Tn-1; out (B,Tn,H*D). Hkv = n_kv_head (None: n_head).
        """
        raise _not_implemented(self, "attention_decode")

    def attention_decode_batch(self, out: Array, qkv: Array, kcache: Array, vcache: Array,
                               slots: Array, positions: Array, n_head: int,
                               n_kv_head: int | None = None) -> None:
        """Continuous batching: one new position for each of B sequences (serving).

        Row b of qkv (B,1,(H+2*Hkv)*D) belongs to the sequence in cache slot slots[b] of
        kcache, vcache (S,Hkv,maxT,D), where it is at position positions[b] (slots, positions: (B,)
        int32; slots distinct, each sequence its own length). Stores row b's key and value
        at that slot and position, then attends over the slot's positions
        0..positions[b]; out (B,1,H*D). Row b's output equals attention_decode on slot
        slots[b] alone (B = Tn = 1, pos = positions[b]). Hkv = n_kv_head (None: n_head).
        """
        raise _not_implemented(self, "attention_decode_batch")

    # ---- llama kernels (LLAMA_KERNELS): needed only to build llama-family models ---------
    def rmsnorm_fwd(self, out: Array, rstd: Array, inp: Array, weight: Array,
                    eps: float) -> None:
        """RMSNorm over the last axis (llama): out = inp * rstd[:,None] * weight.

        out (N,C); rstd (N,) = 1/sqrt(mean(inp**2) + eps), saved for backward (the sum of
        squares accumulated in float32 or better); inp (N,C); weight (C,).
        """
        raise _not_implemented(self, "rmsnorm_fwd")

    def rmsnorm_bwd(self, dinp: Array, dweight: Array, dout: Array, inp: Array,
                    weight: Array, rstd: Array) -> None:
        """Backward of rmsnorm_fwd; accumulates into dinp (N,C) (the residual stream's
        gradient, as layernorm_bwd) and dweight (C,). dout, inp (N,C); rstd (N,) as saved."""
        raise _not_implemented(self, "rmsnorm_bwd")

    def rope_fwd(self, qkv: Array, positions: Array, n_head: int, n_kv_head: int,
                 theta: float) -> None:
        """Rotary position embedding, in place on the query and key heads of qkv.

        qkv (N,(H+2*Hkv)*D): the H query heads (columns 0..H*D) and the Hkv key heads (the
        next Hkv*D columns) are rotated, V (the last Hkv*D) untouched; row n is at position
        positions[n] (int32 (N,), >= 0; a KV-cache step passes its offset positions). Hugging
        Face LlamaForCausalLM's rotate-half convention, so its q_proj/k_proj weights map
        without a permutation: for i < D/2, inv_freq_i = theta**(-2i/D), angle =
        positions[n] * inv_freq_i (angles, cos and sin in float64, rounded to float32),
        x[i], x[i+D/2] <- x[i]*cos - x[i+D/2]*sin, x[i+D/2]*cos + x[i]*sin. D must be even.
        """
        raise _not_implemented(self, "rope_fwd")

    def rope_bwd(self, dqkv: Array, positions: Array, n_head: int, n_kv_head: int,
                 theta: float) -> None:
        """Backward of rope_fwd, in place on dqkv (N,(H+2*Hkv)*D): dQ and dK rotated by
        -angle (the rotation's transpose); dV untouched."""
        raise _not_implemented(self, "rope_bwd")

    def swiglu_fwd(self, out: Array, gate: Array, up: Array) -> None:
        """SwiGLU: out (N,F) = silu(gate) * up, silu(x) = x / (1 + exp(-x)); gate, up (N,F)."""
        raise _not_implemented(self, "swiglu_fwd")

    def swiglu_bwd(self, dgate: Array, dup: Array, dout: Array, gate: Array, up: Array) -> None:
        """Backward of swiglu_fwd: dgate, dup (N,F), overwritten; dout, gate, up (N,F)."""
        raise _not_implemented(self, "swiglu_bwd")

    def gelu_fwd(self, out: Array, inp: Array) -> None:
        """out = GELU(inp), GPT-2's tanh approximation, elementwise (any shape)."""
        raise _not_implemented(self, "gelu_fwd")

    def gelu_bwd(self, dinp: Array, dout: Array, inp: Array) -> None:
        """dinp = dout * GELU'(inp), overwritten; dinp may alias dout."""
        raise _not_implemented(self, "gelu_bwd")

    def relu_fwd(self, out: Array, inp: Array) -> None:
        """out = max(inp, 0), elementwise."""
        raise _not_implemented(self, "relu_fwd")

    def relu_bwd(self, dinp: Array, dout: Array, inp: Array) -> None:
        """dinp = dout where inp > 0, else 0; dinp may alias dout."""
        raise _not_implemented(self, "relu_bwd")

    def residual_fwd(self, out: Array, a: Array, b: Array) -> None:
        """out = a + b, elementwise."""
        raise _not_implemented(self, "residual_fwd")

    def dropout_fwd(self, out: Array, inp: Array, p: float, seed: int) -> None:
        """Inverted dropout: out = inp * keep / (1 - p), keep = dropout_keep_mask(size, p, seed).

        The mask must match dropout_keep_mask bit for bit; out may alias inp.
        """
        raise _not_implemented(self, "dropout_fwd")

    def dropout_bwd(self, dinp: Array, dout: Array, p: float, seed: int) -> None:
        """Backward of dropout_fwd: the same mask, recomputed; dinp may alias dout."""
        raise _not_implemented(self, "dropout_bwd")

    def softmax_xent(self, losses: Array, dlogits: Array | None, logits: Array,
                     targets: Array, dloss: float) -> None:
        """Fused softmax and cross-entropy per row.

        losses (N,) = -log softmax(logits)[target], 0 where target == -1; dlogits (N,V) =
        dloss * (softmax - onehot), zero rows where target == -1 (skipped when None; may
        alias logits); logits (N,V); targets (N,) int32.
        """
        raise _not_implemented(self, "softmax_xent")

    def sgd_update(self, params: Array, grads: Array, momentum_buf: Array | None, lr: float,
                   momentum: float, weight_decay: float, decay_count: int) -> None:
        """torch.optim.SGD (no dampening, no Nesterov) over flat buffers, in place.

        L2 weight decay applies to params[:decay_count]; momentum_buf is used (and may be
        None) only when momentum != 0.
        """
        raise _not_implemented(self, "sgd_update")

    def adam_update(self, params: Array, grads: Array, m: Array, v: Array, lr: float,
                    beta1: float, beta2: float, eps: float, weight_decay: float, step: int,
                    decay_count: int, decoupled: bool) -> None:
        """torch Adam (decoupled=False: L2 in the gradient) or AdamW (True), in place.

        Flat buffers; step >= 1 is the bias-correction step; weight decay applies to
        params[:decay_count].
        """
        raise _not_implemented(self, "adam_update")

    def grad_norm_sq(self, grads: Array) -> float:
        """The sum of squares of a flat buffer, accumulated in float64.

        Gradient clipping reads the global norm from it: one pass, no copy of the buffer.
        """
        raise _not_implemented(self, "grad_norm_sq")

    # ---- optional kernels: fusions with a default made of the kernels above ----------------
    def embed_q_fwd(self, out: Array, tokens: Array, wq: Array, qtype: str) -> None:
        """Token embedding from quantized rows (optional): out (B,T,C) = rows tokens (B,T)
        (int32 in [0, V)) of wq, ggml's rows (V, bytes_per_row) of qtype or what pack_q
        made of them, dequantized.

        A quantized model's lookup, as ggml's get_rows; the default is the numpy reference
        (sllm.quant.dequantize of the rows), which every backend's arrays allow.
        """
        reference.embed_q_fwd(out, tokens, self.unpack_q(wq, qtype), qtype)

    def encoder_q_fwd(self, out: Array, tokens: Array, wq: Array, wpe: Array, qtype: str,
                      pos: int = 0) -> None:
        """encoder_fwd for a quantized token embedding (optional): out (B,T,C) = rows
        tokens (B,T) of wq (as embed_q_fwd takes them), dequantized, + wpe[pos:pos+T]
        (wpe (maxT,C) float32).

        A quantized GPT-2's embedding in one call; the default is embed_q_fwd, then the
        position rows added in numpy (float32: the same sums, exactly).
        """
        self.embed_q_fwd(out, tokens, wq, qtype)
        out += wpe[pos:pos + tokens.shape[1]]

    def matmul_q_bwd(self, dinp: Array, dout: Array, wq: Any, qtype: str) -> None:
        """Backward of matmul_q_fwd to its input (optional): dinp (N,K) = dout (N,OC) @ W,
        overwritten, W (OC,K) the dequantized rows wq (as matmul_q_fwd takes them: ggml's
        rows of qtype, or what this backend's pack_q made of them).

        What a frozen quantized base needs to pass the gradient through (QLoRA): no weight
        gradient. The weights are dequantized exactly (sllm.quant.dequantize), the product
        accumulated in float32: the tolerance is matmul_fwd's on the dequantized matrix.
        This default dequantizes ggml's rows a slice of columns at a time
        (sllm.quant.column_slices: at most DEQUANT_CHUNK_FLOATS floats) and multiplies each
        slice with the backend's matmul_fwd; a backend whose pack_q changes the layout
        provides its own.
        """
        if not isinstance(wq, np.ndarray):
            raise TypeError(f"matmul_q_bwd: the default reads ggml's rows (a uint8 array), got "
                            f"{type(wq).__name__}; backend {self.name!r} packs its weights and "
                            f"must provide its own matmul_q_bwd")
        dx, dy = dinp.reshape(-1, dinp.shape[-1]), dout.reshape(-1, dout.shape[-1])
        for k0, k1, cols in column_slices(wq, qtype, dx.shape[1]):
            w = self.from_numpy(dequantize(cols, qtype, k1 - k0))
            whole = k1 - k0 == dx.shape[1]
            part = dx if whole else self.empty((len(dx), k1 - k0))
            self.matmul_fwd(part, dy, w, None)
            if not whole:
                dx[:, k0:k1] = part
                self.free(part)
            self.free(w)

    def decode_block(self, out: Array, x: Array, kcache: Array, vcache: Array, work: Array,
                     params: Sequence[Any], pos: int, n_head: int, activation: str,
                     qtype: str | None = None) -> None:
        """One transformer block over the new rows of a KV-cache decode step (optional).

        out (B,Tn,C) = the block applied to x (B,Tn,C), the rows at positions
        pos..pos+Tn-1; out may alias x. kcache, vcache (B,H,maxT,D) receive the new keys
        and values as in attention_decode. work: a float array of at least
        decode_block_workspace(B, Tn, C, F) elements (N*(8C + 2F + 2), N = B*Tn, F the
        FFN width), scratch the caller owns; its contents afterwards are unspecified.
        params: the block's 12 tensors in DECODE_BLOCK_PARAMS order (ln1_w, ln1_b, attn_w,
        attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b); with qtype
        None the four matmul weights are float (C_in, C_out) as matmul_fwd takes them (or
        what pack_weight made of them), with qtype "q8_0", "q4_0" or "q4_1" they are the
        uint8 rows matmul_q_fwd takes (or what pack_q made of them).
        activation: "gelu" or "relu". The result equals, exactly, this sequence (no
        dropout): layernorm_fwd, matmul (qkv), attention_decode, matmul (proj),
        residual_fwd, layernorm_fwd, matmul (fc), gelu_fwd/relu_fwd, matmul (fc proj),
        residual_fwd, which is what this default runs on the backend's own kernels.
        """
        compose_decode_block(self, out, x, kcache, vcache, work, params, pos, n_head,
                             activation, qtype)

    def llama_decode_block(self, out: Array, x: Array, kcache: Array, vcache: Array,
                           work: Array, params: Sequence[Any], pos: int, n_head: int,
                           n_kv_head: int, ffn_dim: int, theta: float, eps: float,
                           qtype: str | None = None) -> None:
        """One llama block over the new rows of a KV-cache decode step (optional).

        out (B,Tn,C) = the block applied to x (B,Tn,C), the rows at positions
        pos..pos+Tn-1 of every sequence; out may alias x. kcache, vcache (B,Hkv,maxT,D)
        receive the new keys and values as in attention_decode. work: a float array of at
        least llama_decode_block_workspace(B, Tn, C, F) elements (N*(8C + 3F + 2), N = B*Tn,
        F = ffn_dim, the FFN width), scratch the caller owns; its contents afterwards are
        unspecified. theta: rope_theta; eps: RMSNorm's.
        params: the block's 7 tensors in LLAMA_DECODE_BLOCK_PARAMS order (ln1_w, qkv_w, o_w,
        ln2_w, gate_w, up_w, down_w); with qtype None the five matmul weights are float
        (C_in, C_out) as matmul_fwd takes them (or what pack_weight made of them), with
        qtype "q8_0", "q4_0" or "q4_1" the uint8 rows matmul_q_fwd takes (or what pack_q
        made of them). The result equals, exactly, this sequence (no bias, no dropout):
        rmsnorm_fwd, matmul (qkv), rope_fwd (positions pos..), attention_decode, matmul
        (o), residual_fwd, rmsnorm_fwd, matmul (gate), matmul (up), swiglu_fwd, matmul
        (down), residual_fwd, which is what this default runs on the backend's own kernels.
        """
        compose_llama_decode_block(self, out, x, kcache, vcache, work, params, pos, n_head,
                                   n_kv_head, ffn_dim, theta, eps, qtype)

    def llama_decode_block_batch(self, out: Array, x: Array, kcache: Array, vcache: Array,
                                 work: Array, params: Sequence[Any], slots: Array,
                                 positions: Array, n_head: int, n_kv_head: int, ffn_dim: int,
                                 theta: float, eps: float, qtype: str | None = None) -> None:
        """One llama block over a continuous-batching step (optional; serving).

        llama_decode_block for B sequences at their own positions: row b of x (B,1,C) is
        rotated at positions[b] and belongs to cache slot slots[b] of kcache, vcache
        (S,Hkv,maxT,D), as in attention_decode_batch (slots, positions: (B,) int32; slots
        distinct). out, work, params and the rest as in llama_decode_block. The result
        equals, exactly, llama_decode_block's sequence with rope_fwd at `positions` and
        attention_decode_batch in place of attention_decode, which is what this default
        runs on the backend's own kernels.
        """
        compose_llama_decode_block_batch(self, out, x, kcache, vcache, work, params, slots,
                                         positions, n_head, n_kv_head, ffn_dim, theta, eps,
                                         qtype)

    def decode_block_batch(self, out: Array, x: Array, kcache: Array, vcache: Array,
                           work: Array, params: Sequence[Any], slots: Array, positions: Array,
                           n_head: int, activation: str, qtype: str | None = None) -> None:
        """One transformer block over a continuous-batching step (optional; serving).

        decode_block for B sequences at their own positions: row b of x (B,1,C) belongs to
        the sequence in cache slot slots[b] of kcache, vcache (S,H,maxT,D), at position
        positions[b], as in attention_decode_batch (slots, positions: (B,) int32; slots
        distinct). out, work, params, activation and qtype as in decode_block. The result
        equals, exactly, decode_block's sequence with attention_decode_batch in place of
        attention_decode, which is what this default runs on the backend's own kernels.
        """
        compose_decode_block_batch(self, out, x, kcache, vcache, work, params, slots,
                                   positions, n_head, activation, qtype)
