"""The parameter layout: every tensor's name -> (offset, shape) in one flat buffer.

All parameters live in one float32 buffer (and gradients, Adam m and v in buffers of
the same layout), so an optimizer step, zeroing the gradients, a checkpoint and the
data-parallel gradient all-reduce (sllm/distributed.py) are each one call. Tensors with
ndim >= 2 come first: weight decay applies to exactly the prefix [0, decay_count). Offsets
are aligned to 16 floats (64 bytes) so SIMD kernels may use aligned loads and a file can
be memory-mapped tensor by tensor.

JavaScript twin: sllm/web/format.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig

ALIGN = 16  # floats
# Token embeddings are stored (V, C), as lookup rows; every other matrix is (in, out).
EMBEDDINGS = frozenset({"wte", "model.embed_tokens.weight"})


def embedding_name(cfg: ModelConfig) -> str:
    """The token embedding's name: "wte" (gpt2) or "model.embed_tokens.weight" (llama)."""
    return "model.embed_tokens.weight" if cfg.architecture == "llama" else "wte"


def head_name(cfg: ModelConfig) -> str:
    """The output projection's tensor: lm_head.weight, or the embedding when tied."""
    return embedding_name(cfg) if cfg.tie_embeddings else "lm_head.weight"


def parameter_shapes(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter, matrices first (GPT-2 or llama naming)."""
    if cfg.architecture == "llama":
        return llama_parameter_shapes(cfg)
    V, C, F, L = cfg.vocab_size, cfg.embedding_dim, cfg.ffn_hidden_dim, cfg.num_layers
    matrices: list[tuple[str, tuple[int, ...]]] = [("wte", (V, C)), ("wpe", (cfg.max_seq_len, C))]
    vectors: list[tuple[str, tuple[int, ...]]] = []
    for i in range(L):
        p = f"h.{i}."
        matrices += [(p + "attn.c_attn.weight", (C, 3 * C)), (p + "attn.c_proj.weight", (C, C)),
                     (p + "mlp.c_fc.weight", (C, F)), (p + "mlp.c_proj.weight", (F, C))]
        vectors += [(p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
                    (p + "attn.c_attn.bias", (3 * C,)), (p + "attn.c_proj.bias", (C,)),
                    (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
                    (p + "mlp.c_fc.bias", (F,)), (p + "mlp.c_proj.bias", (C,))]
    if not cfg.tie_embeddings:
        matrices.append(("lm_head.weight", (C, V)))
    vectors += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    return matrices + vectors


def llama_parameter_shapes(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """A llama model's tensors under Hugging Face LlamaForCausalLM's names, with two
    differences (the mapping is one to one; docs/llama.md): matrices are stored (in, out) as
    GPT-2's are, i.e. transposed from torch's (out, in), except the embedding (V, C); and
    q_proj, k_proj, v_proj are one fused self_attn.qkv_proj (C, (H + 2*Hkv)*D) with columns
    [q | k | v], so one matmul fills the qkv buffer the rope and attention kernels read."""
    V, C, F, L = cfg.vocab_size, cfg.embedding_dim, cfg.ffn_hidden_dim, cfg.num_layers
    E = "model.embed_tokens.weight"
    matrices: list[tuple[str, tuple[int, ...]]] = [(E, (V, C))]
    vectors: list[tuple[str, tuple[int, ...]]] = []
    for i in range(L):
        p = f"model.layers.{i}."
        matrices += [(p + "self_attn.qkv_proj.weight", (C, cfg.qkv_width)),
                     (p + "self_attn.o_proj.weight", (C, C)),
                     (p + "mlp.gate_proj.weight", (C, F)), (p + "mlp.up_proj.weight", (C, F)),
                     (p + "mlp.down_proj.weight", (F, C))]
        vectors += [(p + "input_layernorm.weight", (C,)),
                    (p + "post_attention_layernorm.weight", (C,))]
    if not cfg.tie_embeddings:
        matrices.append(("lm_head.weight", (C, V)))
    return matrices + vectors + [("model.norm.weight", (C,))]


@dataclass(frozen=True)
class Slot:
    """Where one tensor sits in the flat buffer."""

    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of elements."""
        n = 1
        for s in self.shape:
            n *= s
        return n


class Layout:
    """Name -> Slot table for a config; `total` floats, decay applies to [0, decay_count).

    `exclude` leaves tensors out (a quantized model keeps only its float32 tensors in the
    flat buffer); num_parameters then counts the tensors the layout holds.
    """

    def __init__(self, cfg: ModelConfig, exclude: frozenset[str] | set[str] = frozenset()):
        self.slots: dict[str, Slot] = {}
        offset = 0
        self.decay_count = 0
        for name, shape in parameter_shapes(cfg):
            if name in exclude:
                continue
            slot = Slot(offset, shape)
            self.slots[name] = slot
            offset = _align(offset + slot.size)
            if len(shape) >= 2:
                self.decay_count = offset
        self.total = offset
        self.num_parameters = sum(s.size for s in self.slots.values())

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Shaped views of each tensor into `flat` (a 1-D array of `total` elements)."""
        return {name: flat[s.offset:s.offset + s.size].reshape(s.shape)
                for name, s in self.slots.items()}


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN
