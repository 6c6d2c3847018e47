"""SLLM: a GPT-style language model whose forward and backward are straight lines of
backend kernel calls over one flat parameter buffer.

JavaScript twin: sllm/web/model.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np

from . import backends, budget, llama
from .activations import Activations, KVCache, LlamaActivations, Prompts
from .backends.base import DECODE_BLOCK_PARAMS, LLAMA_DECODE_BLOCK_PARAMS, Backend
from .config import ModelConfig, resolve_config
from .errors import BackendError, ConfigError
from .init import initialize
from .layout import EMBEDDINGS, Layout, head_name, parameter_shapes
from .lora import Adapter, Attached, LoraError, LoraWeight
from .lora_bank import RoutedWeight
from .lora_tokens import TokenHead, TokenRows
from .quant import QTensor, bytes_per_row
from .validate import check_int


def _layer(views: Mapping[str, np.ndarray | QTensor], i: int) -> SimpleNamespace:
    """Short names for the tensors of block i (parameters or gradients)."""
    p = f"h.{i}."
    return SimpleNamespace(
        ln1_w=views[p + "ln_1.weight"], ln1_b=views[p + "ln_1.bias"],
        attn_w=views[p + "attn.c_attn.weight"], attn_b=views[p + "attn.c_attn.bias"],
        proj_w=views[p + "attn.c_proj.weight"], proj_b=views[p + "attn.c_proj.bias"],
        ln2_w=views[p + "ln_2.weight"], ln2_b=views[p + "ln_2.bias"],
        fc_w=views[p + "mlp.c_fc.weight"], fc_b=views[p + "mlp.c_fc.bias"],
        fcproj_w=views[p + "mlp.c_proj.weight"], fcproj_b=views[p + "mlp.c_proj.bias"])


def _decode_block_args(L: SimpleNamespace, llama_block: bool = False
                       ) -> tuple[tuple[Any, ...], str | None] | None:
    """Block i's tensors in DECODE_BLOCK_PARAMS order (llama_block: LLAMA_DECODE_BLOCK_PARAMS)
    and the qtype of its matmul weights (None: float32), for the fused decode_block
    (llama_decode_block) kernel; None when the weights mix types (a hand-built file)."""
    names = LLAMA_DECODE_BLOCK_PARAMS if llama_block else DECODE_BLOCK_PARAMS
    weights = [getattr(L, n) for n in names if n.endswith("_w") and not n.startswith("ln")]
    qtypes = {w.qtype if isinstance(w, QTensor) else None for w in weights}
    if len(qtypes) != 1:
        return None
    params = tuple(getattr(L, name) for name in names)
    return tuple(p.kernel_rows if isinstance(p, QTensor) else p for p in params), qtypes.pop()


_WRAPPED = (TokenHead, LoraWeight, RoutedWeight)  # weights _matmul adds a delta to


class _DecodeWeights(NamedTuple):
    """SLLM._decode_weights: a KV-cache step's layers (float matmul weights packed by the
    backend), their fused decode blocks, and the output head."""

    layers: list[SimpleNamespace]
    blocks: list[tuple[tuple[Any, ...], str | None] | None]
    head: Any


def _matmul_weight_names(cfg: ModelConfig) -> set[str]:
    """The tensors a decode step multiplies rows by: every matrix but the token embedding
    and GPT-2's position table (rows looked up, not multiplied), and the output head (the
    token embedding itself when tied)."""
    matrices = {name for name, shape in parameter_shapes(cfg) if len(shape) == 2}
    return (matrices - EMBEDDINGS - {"wpe"}) | {head_name(cfg)}


class _Frozen(dict[str, np.ndarray]):
    """Gradient views of a frozen base: only the norms' (their backward kernels write a
    weight gradient beside the input gradient); every other tensor has None."""

    def __missing__(self, key: str) -> Any:
        return None


def _norm_names(cfg: ModelConfig) -> set[str]:
    """The LayerNorm / RMSNorm weights (and GPT-2's LayerNorm biases) of a config."""
    return {n for n, shape in parameter_shapes(cfg)
            if len(shape) == 1 and ("ln_" in n or "norm" in n)}


def mix_seed(*parts: int) -> int:
    """A 32-bit seed from integers (splitmix64 steps), for per-call dropout masks and each
    rank's own dropout seed. JavaScript twin: mixSeed in sllm/web/model.js."""
    x = 0
    for part in parts:
        x = (x + (part & 0xFFFFFFFFFFFFFFFF) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0xFFFFFFFF


class SLLM:
    """A transformer language model of the GPT-2 or llama family on a pluggable backend.

    This class is the family-independent machinery (buffers, caches, quantization, the
    public surface) and GPT-2's line of kernel calls; the llama family's line is
    sllm/llama.py (config.architecture picks it).

    `SLLM(config, backend="auto", seed=0, init="gpt2")`: config is a ModelConfig, a dict
    or a path to a JSON file; backend is a name (see sllm.backends.available()) or a
    Backend instance. The model starts in train mode, as a PyTorch module does.
    `quantized` ({name: (qtype, uint8 rows)}, used by the loader) builds an inference-only
    model whose matmul weights are those quantized rows (see `quantize`).

    `recompute` (default False): activation checkpointing for training. forward_backward
    then keeps only each layer's output and recomputes a layer's forward in backward just
    before going back through it, and makes the logits a slice of rows at a time (never
    N x V): the same loss and gradients (bit for bit while the logits fit one slice, else
    within float32 rounding), one more forward of the blocks per step, and the activations
    of one layer instead of every layer's (what a LoRA on a quantized base holds most of).

    `pack_weights` (default True): KV-cache steps (prefill, decode, decode_batch) read each
    float matmul weight as the backend packs it for few-row products (Backend.pack_weight:
    cpp copies it into its GEMM's panels once, on the first step, instead of on every call
    of 5 or more rows). The same results; a second copy of those weights in memory while
    the model decodes. False decodes from the weights themselves (llama.cpp's --no-repack).
    """

    def __init__(self, config: ModelConfig | dict[str, Any] | str | os.PathLike[str],
                 backend: str | Backend = "auto", seed: int = 0, init: str | None = "gpt2",
                 quantized: dict[str, tuple[str, np.ndarray]] | None = None):
        self.config = resolve_config(config)
        check_int("seed", seed, 0, 2**63 - 1)
        self.backend = backends.get(backend)
        if self.config.architecture == "llama" and (missing := self.backend.missing_llama_kernels()):
            raise BackendError(f"backend {self.backend.name!r} cannot build a llama model: it "
                               f"lacks the llama kernels {', '.join(missing)} (it runs GPT-2 "
                               f"models; see LLAMA_KERNELS in sllm/backends/base.py)")
        budget.check_model(self.config, self.backend)  # before the layout or any buffer
        self.layout = Layout(self.config)
        self.seed = seed
        self.training = True
        self.dropout_step = 0  # counts training forwards; part of each dropout seed
        self._acts: dict[tuple[int, int, bool, bool, bool], Activations] = {}
        self._batch_acts: dict[int, Activations] = {}  # decode_batch, by batch size
        self._qweights: dict[str, QTensor] = {}
        self.adapter: Attached | None = None  # see attach_adapter
        self.recompute = False  # activation checkpointing (see the class docstring)
        if quantized:
            self._use_quantized(quantized, {})
        else:
            self.flat_params = self.backend.zeros(self.layout.total)
            self.flat_grads = self.backend.zeros(self.layout.total)
            self._params = self.layout.views(self.flat_params)
            self._grads = self.layout.views(self.flat_grads)
            self._p_layers = self._layers(self._params)
            self._g_layers = self._layers(self._grads)
            self._blocks = self._fused_blocks()
        self._routed_rows: Any = None  # a serving AdapterBank whose adapters have token rows
        self._routed = False  # route_weights gave served adapters' weights
        self._decode_packed: _DecodeWeights | None = None  # see _decode_weights
        self._pack_weights = True
        self._last_seed = 0
        self.tokenizer: dict[str, Any] | None = None  # the vocabulary, saved with the model
        self.metadata: dict[str, Any] = {}
        if init is not None and not quantized:  # None: leave zeros (a loader fills them)
            initialize(self._params, self.config, init, seed)

    @classmethod
    def from_config(cls, config: ModelConfig | dict[str, Any] | str | os.PathLike[str],
                    backend: str | Backend = "auto", **kwargs: Any) -> SLLM:
        """Build a freshly initialised model from a config, dict or JSON path."""
        return cls(config, backend=backend, **kwargs)

    # ---- the public surface ---------------------------------------------------------
    def num_parameters(self) -> int:
        """Number of trainable scalars."""
        return self.layout.num_parameters

    def parameters(self) -> dict[str, np.ndarray]:
        """Live views of the weights by GPT-2 name; writing into them changes the model.

        On a quantized model: the float32 tensors only (see quantized_weights()). Calling
        it drops the decode steps' packed copy of the weights (Backend.pack_weight; made
        again on the next decode), so write into the views this call returns, not into
        ones kept from before a decode step."""
        self._decode_packed = None
        return dict(self._params)

    def quantized_weights(self) -> dict[str, QTensor]:
        """The quantized matmul weights by GPT-2 name ({} unless quantize() ran)."""
        return dict(self._qweights)

    @property
    def qtype(self) -> str | None:
        """The quantization type of the matmul weights, or None for a float model."""
        return next(iter(self._qweights.values())).qtype if self._qweights else None

    def quantize(self, qtype: str, embeddings: bool = True) -> SLLM:
        """Quantize the weights in place to "q8_0", "q4_0" or "q4_1"; returns self.

        The four matrices of each layer, the output head and (unless embeddings=False)
        the token embedding wte become rows of ggml blocks along their reduction axis (see
        sllm.quant; an embedding lookup dequantizes the rows it needs). wpe, LayerNorm and
        biases stay float32. The float copies are freed, and the model becomes
        inference-only (forward, loss, decode, generate).
        """
        from .quant import block_dtype, quantize_weight, quantized_weight_names
        if self.adapter is not None:
            raise LoraError("detach the adapter before quantizing (or merge it first)")
        if self._qweights:
            raise ValueError(f"this model is already quantized ({self.qtype}); quantize the "
                             f"float32 model instead")
        block_dtype(qtype)  # a clear error for an unknown type before any work
        rows = {n: (qtype, quantize_weight(n, self._params[n], qtype))
                for n in quantized_weight_names(self.config, embeddings)}
        self._use_quantized(rows, self._params)
        return self

    def _use_quantized(self, rows: dict[str, tuple[str, np.ndarray]],
                       floats: dict[str, np.ndarray]) -> None:
        """Hold `rows` as the quantized weights and the remaining float32 tensors (copied
        from `floats` when given) in a smaller flat buffer; drop the gradients."""
        dense = Layout(self.config, exclude=set(rows))
        flat = self.backend.zeros(dense.total)
        views = dense.views(flat)
        for name, view in views.items():
            if name in floats:
                view[...] = floats[name]
        qweights = {}
        for name, (qtype, data) in rows.items():
            slot = self.layout.slots[name]
            shape = slot.shape if name in EMBEDDINGS else slot.shape[::-1]
            if data.shape != (shape[0], bytes_per_row(qtype, shape[1])):
                raise ValueError(f"{name}: {qtype} rows of shape {data.shape} do not hold "
                                 f"a {shape} matrix")
            rows_here = self.backend.from_numpy(data, np.uint8)
            packed = self.backend.pack_q(rows_here, qtype)
            # a packed copy replaces ggml's rows (saving reads them back): one copy in memory
            kept = rows_here if packed is rows_here else None
            if kept is None:
                self.backend.free(rows_here)
            qweights[name] = QTensor(qtype, kept, (shape[0], shape[1]), packed,
                                     self.backend.unpack_q)
        for old in (getattr(self, "flat_params", None), getattr(self, "flat_grads", None)):
            if old is not None:
                self.backend.free(old)
        for acts in self._acts.values():
            acts.release()
        self._acts.clear()
        self.flat_params, self._params, self._qweights = flat, views, qweights
        self._decode_packed = None
        self.flat_grads, self._grads, self._g_layers = self.backend.zeros(1), {}, []
        self._p_layers = self._layers({**views, **qweights})
        self._blocks = self._fused_blocks()

    @property
    def pack_weights(self) -> bool:
        """Whether KV-cache steps read the backend's packed copy of the float matmul
        weights (see the class docstring); setting it drops the copy."""
        return self._pack_weights

    @pack_weights.setter
    def pack_weights(self, value: bool) -> None:
        if not isinstance(value, bool):  # bool("false") is True: refuse, don't guess
            raise ConfigError(f"pack_weights must be True or False, got {type(value).__name__} "
                            f"{value!r}")
        self._pack_weights, self._decode_packed = value, None

    @property
    def is_llama(self) -> bool:
        """Whether this model is of the llama family (sllm/llama.py runs it)."""
        return self.config.architecture == "llama"

    def _layers(self, views: Mapping[str, Any]) -> list[SimpleNamespace]:
        """Short names for each block's tensors in `views` (parameters or gradients)."""
        make = llama.layer if self.is_llama else _layer
        return [make(views, i) for i in range(self.config.num_layers)]

    def _new_activations(self, B: int, T: int, grads: bool, recompute: bool = False,
                         frozen: bool = False) -> Activations:
        """The buffers of this family's forward (and backward) for one (B, T) shape (frozen:
        for training an attached adapter, the base frozen)."""
        kind = LlamaActivations if self.is_llama else Activations
        return kind(self.backend, self.config, B, T, grads, recompute, frozen)

    def _dropout_seed(self, layer: int, site: int) -> int:
        """The dropout mask seed of one site (0: attention, 1: MLP) of one layer, this step."""
        return mix_seed(self._last_seed, layer, site)

    def _fused_blocks(self, layers: list[SimpleNamespace] | None = None
                      ) -> list[tuple[tuple[Any, ...], str | None] | None]:
        """Per layer (of `layers`, default the model's own), the arguments of the backend's
        own decode_block (a llama's: llama_decode_block), or None where a decode step runs
        the layer kernel by kernel: the backend has only the contract's default (the same
        kernels, behind one more Python call), or the layer mixes weight types."""
        kernel = "llama_decode_block" if self.is_llama else "decode_block"

        def own(name: str) -> bool:
            return getattr(type(self.backend), name) is not getattr(Backend, name)
        if layers is None:
            # (a continuous-batching step fuses its blocks only where the _batch kernel is
            # the backend's own too)
            self._fused_batch = own(kernel) and own(kernel + "_batch")
        return [_decode_block_args(L, self.is_llama) if own(kernel) else None
                for L in (self._p_layers if layers is None else layers)]

    def _decode_weights(self) -> _DecodeWeights | None:
        """A KV-cache step's (prefill, decode, decode_batch) layers, fused blocks and output
        head, with every float matmul weight as the backend multiplies a few rows by it
        fastest (pack_weight: cpp reads its GEMM's panels instead of packing the weight on
        every step). Made on the first step and dropped whenever the weights may change
        (train(), forward_backward(), parameters(), quantize(), adapters). None
        where the step reads the weights as they are: pack_weights off, an adapter attached
        or served."""
        if not self._pack_weights or self.adapter is not None or self._routed:
            return None
        if self._decode_packed is None:
            head, matrices = head_name(self.config), _matmul_weight_names(self.config)
            packed = {name: self.backend.pack_weight(w, name == head and self.config.tie_embeddings)
                      for name, w in self._params.items() if name in matrices}
            layers = self._layers({**self._params, **packed, **self._qweights})
            self._decode_packed = _DecodeWeights(layers, self._fused_blocks(layers),
                                                self._lm_head(self._qweights, packed, self._params))
        return self._decode_packed

    def gradients(self) -> dict[str, np.ndarray]:
        """Views of the gradients filled by forward_backward, same names as parameters();
        with an adapter attached, the adapter's (its tensors' names: the base is frozen)."""
        return self.adapter.gradients() if self.adapter else dict(self._grads)

    # ---- LoRA adapters (sllm/lora.py) ------------------------------------------------------
    def attach_adapter(self, adapter: Adapter, check: bool = True) -> Attached:
        """Add `adapter`'s low-rank delta to its target weights in every forward, and freeze
        the base: forward_backward then fills only the adapter's gradients (the base's
        gradient buffer is freed), and trainable() is the adapter. LoraError when the
        adapter was made for another base (check=False skips that: a data-parallel rank
        whose weights arrive later) or one is attached already."""
        if self.adapter is not None:
            raise LoraError("an adapter is attached already; detach_adapter() first")
        if check:
            adapter.check_base(self)
        self.adapter = Attached(self, adapter)
        self._decode_packed = None
        self._p_layers = self._layers({**self._params, **self._qweights, **self.adapter.weights})
        self._freeze_grads()
        self._blocks = [None] * self.config.num_layers  # the fused decode block has no delta
        return self.adapter

    def detach_adapter(self) -> Adapter | None:
        """Remove the attached adapter (returned, its tensors copied back to numpy) and
        restore the base's own gradients; None when none is attached."""
        if self.adapter is None:
            return None
        attached, self.adapter = self.adapter, None
        self._decode_packed = None
        self._p_layers = self._layers({**self._params, **self._qweights})
        self.backend.free(self.flat_grads)
        if self._qweights:
            self.flat_grads, self._grads, self._g_layers = self.backend.zeros(1), {}, []
        else:
            self.flat_grads = self.backend.zeros(self.layout.total)
            self._grads = self.layout.views(self.flat_grads)
            self._g_layers = self._layers(self._grads)
        self._blocks = self._fused_blocks()
        return attached.detach()

    def route_weights(self, routed: Mapping[str, Any] | None, rows: Any = None) -> None:
        """Serve several adapters at once (sllm.lora_bank): the RoutedWeights in `routed`
        ({weight name: RoutedWeight}) stand in for those weights, `rows` (the bank, when an
        adapter has token rows) adds each row's token rows as an attached adapter's
        TokenRows would, and the fused decode block is off as with an attached adapter;
        None restores the base's own."""
        if self.adapter is not None:
            raise LoraError("detach the attached adapter before serving adapters by name")
        self._p_layers = self._layers({**self._params, **self._qweights, **(routed or {})})
        self._routed_rows = rows
        self._routed = bool(routed or rows)
        self._blocks = [None] * self.config.num_layers if routed or rows else \
            self._fused_blocks()

    def _freeze_grads(self) -> None:
        """Gradient buffers for the norms only (scratch for their backward kernels)."""
        norms = Layout(self.config, exclude={n for n, _ in parameter_shapes(self.config)
                                             if n not in _norm_names(self.config)})
        self.backend.free(self.flat_grads)
        self.flat_grads = self.backend.zeros(max(norms.total, 1))
        self._grads = _Frozen(norms.views(self.flat_grads))
        self._g_layers = self._layers(self._grads)

    def trainable(self) -> Any:
        """What an optimizer updates: the attached adapter, else the model itself (each has
        backend, flat_params, flat_grads and layout.total / layout.decay_count)."""
        return self.adapter if self.adapter is not None else self

    def train(self) -> SLLM:
        """Train mode: dropout active."""
        self.training = True
        self._decode_packed = None
        return self

    def eval(self) -> SLLM:
        """Eval mode: dropout off, forward is deterministic. (The decode steps' packed
        weights stay: generate() calls eval() every time.)"""
        self.training = False
        return self

    def forward(self, tokens: Any) -> np.ndarray:
        """Logits (B, T, vocab_size) for int tokens (B, T); a copy the caller owns."""
        acts = self._run_forward(tokens, grads=False)
        return np.array(acts.logits)

    def hidden_states(self, tokens: Any) -> np.ndarray:
        """The final normalized hidden states (B, T, C) that the LM head reads (eval mode:
        no dropout); `sllm serve`'s /v1/embeddings pools them. A copy the caller owns."""
        was = self.training
        self.training = False
        try:
            return np.array(self._run_forward(tokens, grads=False).lnf)
        finally:
            self.training = was

    def loss(self, tokens: Any, targets: Any) -> float:
        """Mean cross-entropy over targets != -1, without computing gradients. In a training
        step's buffers when one of this shape exists (an evaluation during training holds
        no second set; under recompute the logits come a slice of rows at a time)."""
        acts = self._run_forward(tokens, grads=False, reuse=True)
        count = self._load_targets(acts, targets)
        if acts.recompute:
            self._head_loss(acts, None)
        else:
            self.backend.softmax_xent(acts.losses, None, acts.logits, acts.targets, 1.0)
        return float(np.sum(acts.losses, dtype=np.float64) / max(count, 1))

    def forward_backward(self, tokens: Any, targets: Any) -> float:
        """Mean cross-entropy over targets != -1; fills gradients() (overwriting them)."""
        if self._qweights and self.adapter is None:
            raise RuntimeError(f"forward_backward: this model is quantized ({self.qtype}) and "
                               f"runs inference only; train the float32 model")
        self._decode_packed = None  # the weights are about to change
        acts = self._run_forward(tokens, grads=True)
        count = self._load_targets(acts, targets)
        self._zero_grads()
        self._head_loss(acts, 1.0 / max(count, 1))
        loss = float(np.sum(acts.losses, dtype=np.float64) / max(count, 1))
        self._backward(acts)
        return loss

    def _head_loss(self, a: Activations, dloss: float | None) -> None:
        """The losses, and (dloss given) the output head's backward into a.dln (and its
        gradient): from the logits forward made, or (recompute) made here HEAD_ROWS rows at
        a time in a.logits, so that N x V logits never exist at once."""
        head, tie = self._lm_head(self._qweights, self._params), self.config.tie_embeddings
        dhead = self._grads[head_name(self.config)]
        N = a.losses.size
        lnf, dln = a.lnf.reshape(N, -1), a.dln.reshape(N, -1)
        losses, targets = a.losses.reshape(N), a.targets.reshape(N)
        logits = a.logits.reshape(-1, a.logits.shape[-1])
        for r0 in range(0, N, len(logits)):
            rows = slice(r0, min(N, r0 + len(logits)))
            part = logits[:rows.stop - r0]
            if a.recompute:
                self._matmul(part, lnf[rows], head, None, tie)
            if dloss is None:  # the loss alone (SLLM.loss)
                self.backend.softmax_xent(losses[rows], None, part, targets[rows], 1.0)
                continue
            self.backend.softmax_xent(losses[rows], part, part, targets[rows], dloss)
            self._matmul_bwd(dln[rows], dhead, None, part, lnf[rows], head, tie)

    def generate(self, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, **kwargs: Any) -> list[int]:
        """Prompt + up to max_new_tokens sampled ids, using a KV cache (see sllm.generate)."""
        from .generate import generate
        return generate(self, prompt_ids, max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, seed=seed, **kwargs)

    def save(self, path: str | os.PathLike[str], dtype: str = "f32", **kwargs: Any) -> None:
        """Write the model to `path` in the SLLM binary format (atomically)."""
        from .serialize import save_model
        save_model(self, path, dtype=dtype, **kwargs)

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write the model in the roadmap's JSON interchange format (config, vocab, weights)."""
        if self._qweights:
            raise ValueError(f"a quantized model ({self.qtype}) cannot be written as JSON; "
                             f"save it with model.save, or export the float32 model")
        from .interchange import write_json
        write_json(path, self.config.to_dict(), self.parameters(),
                   getattr(self, "tokenizer", None), getattr(self, "metadata", {}))

    # ---- forward ---------------------------------------------------------------------
    def _check_tokens(self, tokens: Any) -> np.ndarray:
        t = np.asarray(tokens)
        if t.ndim == 1:
            t = t[None, :]
        if t.ndim != 2 or t.dtype.kind not in "iu":
            raise ValueError(f"tokens must be integers of shape (B, T), got {t.dtype} {t.shape}")
        if not 1 <= t.shape[1] <= self.config.max_seq_len or t.shape[0] < 1:
            raise ValueError(f"tokens shape {t.shape}: need B >= 1 and 1 <= T <= "
                             f"max_seq_len ({self.config.max_seq_len})")
        # a decode step checks one id: Python's min/max of a short list beat two reductions
        ids = t.ravel().tolist() if t.size <= 16 else None
        lo, hi = (min(ids), max(ids)) if ids is not None else (int(t.min()), int(t.max()))
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), "
                             f"got range [{lo}, {hi}]")
        return t

    def _activations(self, B: int, T: int, grads: bool, reuse: bool = False) -> Activations:
        """The buffers of a (B, T) forward (grads: and its backward), kept per shape; reuse:
        a forward without backward may run in a training shape's buffers."""
        if reuse:
            train = next((a for k, a in self._acts.items() if k[:3] == (B, T, True)), None)
            if train is not None:
                return train
        key = (B, T, grads, grads and self.recompute, grads and self.adapter is not None)
        acts = self._acts.get(key)
        if acts is None:
            if len(self._acts) >= 3:  # keep a few shapes (train, eval, decode) alive
                old = self._acts.pop(next(iter(self._acts)))
                old.release()
            budget.check_activations(self.config, B, T, self.backend, grads, key[3], key[4])
            acts = self._acts[key] = self._new_activations(B, T, grads, key[3], key[4])
        return acts

    def _load_targets(self, acts: Activations, targets: Any) -> int:
        t = np.asarray(targets)
        if t.ndim == 1 and acts.shape[0] == 1:  # 1-D, like the tokens it goes with
            t = t[None, :]
        if t.shape != acts.shape:
            raise ValueError(f"targets shape {t.shape} must match tokens shape {acts.shape}")
        if t.size and (t.min() < -1 or t.max() >= self.config.vocab_size):
            raise ValueError(f"targets must be in [-1, {self.config.vocab_size})")
        acts.targets[...] = t
        return int(np.count_nonzero(t >= 0))

    def _run_forward(self, tokens: Any, grads: bool, cache: KVCache | None = None,
                     reuse: bool = False) -> Activations:
        t = self._check_tokens(tokens)
        acts = self._activations(t.shape[0], t.shape[1], grads, reuse)
        acts.tokens[...] = t
        dropout = self.config.dropout if self.training and cache is None else 0.0
        lora_p = self.adapter.adapter.config.dropout if self.adapter is not None and \
            self.training and cache is None else 0.0
        if dropout or lora_p:
            self.dropout_step += 1
            self._last_seed = mix_seed(self.seed, self.dropout_step)
        if self.adapter is not None:
            self.adapter.dropout = lora_p  # this forward's (and its backward's)
        self._forward(acts, dropout, cache)
        return acts

    def _forward(self, a: Activations, dropout: float, cache: KVCache | None,
                 rows: tuple[np.ndarray, np.ndarray] | None = None,
                 prompts: Prompts | None = None) -> None:
        """rows = (slots, positions): a continuous-batching step (see decode_batch);
        prompts: a batched prefill (see prefill_batch)."""
        if self.is_llama:
            return llama.forward(self, a, dropout, cache, rows, prompts)  # type: ignore[arg-type]
        k, cfg, P = self.backend, self.config, self._params
        H, pos = cfg.num_heads, (cache.pos if cache else 0)
        batch = self._decode_weights() if cache is not None else None
        layers, blocks = (batch.layers, batch.blocks) if batch else (self._p_layers, self._blocks)
        wte = self._qweights.get("wte")  # a quantized (tied) token embedding
        if rows is not None:
            self._embed_rows(a, rows[1])
        elif wte is not None:
            k.encoder_q_fwd(a.x0, a.tokens, wte.kernel_rows, P["wpe"], wte.qtype, pos)
        else:
            k.encoder_fwd(a.x0, a.tokens, P["wte"], P["wpe"], pos)
        self._token_rows_fwd(a)
        x = a.x0
        for i, (L, la) in enumerate(zip(layers, a.layers, strict=True)):
            if cache is not None and (block := blocks[i]) is not None and prompts is None \
                    and (rows is None or self._fused_batch):
                # a decode step: the whole block in one call (the lines below, fused)
                params, qtype = block
                if rows is None:
                    k.decode_block(la.res3, x, cache.k[i], cache.v[i], a.decode_work(), params,
                                   pos, H, cfg.activation, qtype)
                else:
                    k.decode_block_batch(la.res3, x, cache.k[i], cache.v[i], a.decode_work(),
                                         params, *rows, H, cfg.activation, qtype)
                x = la.res3
                continue
            x = self._block_fwd(i, L, la, x, dropout, cache, rows, prompts)
        k.layernorm_fwd(a.lnf, a.lnf_mean, a.lnf_rstd, x, P["ln_f.weight"], P["ln_f.bias"])
        self._head_fwd(a, cache, batch.head if batch else None, prompts)
        a.dropout = dropout

    def _head_fwd(self, a: Activations, cache: KVCache | None, head: Any = None,
                  prompts: Prompts | None = None) -> None:
        """The logits from a.lnf (through `head`, default the model's own). A prefill into
        a KV cache makes only the last position's (all that decode returns): B rows through
        the output head instead of B x T (a batched prefill: each prompt's own last
        position, into a.logits[:, -1]). Under recompute none: the loss makes them a slice
        at a time (_head_loss)."""
        if a.recompute:
            return
        if head is None:
            head = self._lm_head(self._qweights, self._params)
        tie = self.config.tie_embeddings
        if cache is None or a.shape[1] == 1:
            self._matmul(a.logits, a.lnf, head, None, tie)
            return
        lnf, logits = a.last_rows()
        if prompts is None:
            lnf[...] = a.lnf[:, -1:]
        else:
            lnf[:, 0] = a.lnf[np.arange(a.shape[0]), np.asarray(prompts.lengths) - 1]
        self._matmul(logits, lnf, head, None, tie)
        a.logits[:, -1:] = logits

    def _block_fwd(self, i: int, L: SimpleNamespace, la: SimpleNamespace, x: np.ndarray,
                   dropout: float, cache: KVCache | None,
                   rows: tuple[np.ndarray, np.ndarray] | None,
                   prompts: Prompts | None = None) -> np.ndarray:
        """GPT-2 block i from its input x into la's buffers; returns its output la.res3.
        Backward calls it again to recompute a layer (Activations.recompute)."""
        k, H, mm = self.backend, self.config.num_heads, self._matmul
        pos = cache.pos if cache else 0
        k.layernorm_fwd(la.ln1, la.ln1_mean, la.ln1_rstd, x, L.ln1_w, L.ln1_b)
        mm(la.qkv, la.ln1, L.attn_w, L.attn_b)
        if cache is None:
            k.attention_fwd(la.atty, la.att, la.qkv, H)
        elif prompts is not None:
            prompts.attend(k, la, cache, i, H)
        elif rows is not None:
            k.attention_decode_batch(la.atty, la.qkv, cache.k[i], cache.v[i], *rows, H)
        else:
            k.attention_decode(la.atty, la.qkv, cache.k[i], cache.v[i], pos, H)
        mm(la.attproj, la.atty, L.proj_w, L.proj_b)
        if dropout:
            k.dropout_fwd(la.attproj, la.attproj, dropout, mix_seed(self._last_seed, i, 0))
        k.residual_fwd(la.res2, x, la.attproj)
        k.layernorm_fwd(la.ln2, la.ln2_mean, la.ln2_rstd, la.res2, L.ln2_w, L.ln2_b)
        mm(la.fch, la.ln2, L.fc_w, L.fc_b)
        self._act_fwd(la.fch_act, la.fch)
        mm(la.fcproj, la.fch_act, L.fcproj_w, L.fcproj_b)
        if dropout:
            k.dropout_fwd(la.fcproj, la.fcproj, dropout, mix_seed(self._last_seed, i, 1))
        k.residual_fwd(la.res3, la.res2, la.fcproj)
        return la.res3

    def _matmul(self, out: np.ndarray, inp: np.ndarray, weight: np.ndarray | QTensor,
                bias: np.ndarray | None, trans_w: bool = False) -> None:
        """matmul_fwd, or matmul_q_fwd when the weight is quantized (rows along K); plus the
        LoRA delta when the weight is an attached adapter's target."""
        if not isinstance(weight, _WRAPPED):  # a plain weight (each decode step's head): one check
            if isinstance(weight, QTensor):
                self.backend.matmul_q_fwd(out, inp, weight.kernel_rows, bias, weight.qtype)
            else:
                self.backend.matmul_fwd(out, inp, weight, bias, trans_w)
        elif isinstance(weight, TokenHead):  # an adapter's trainable token rows
            self._matmul(out, inp, weight.base, bias, trans_w)
            weight.rows.head_fwd(out, inp)
        elif isinstance(weight, LoraWeight):
            assert self.adapter is not None  # LoraWeights exist only while attached
            self._matmul(out, inp, weight.base, bias, trans_w)
            self.adapter.forward(out, inp, weight, mix_seed(self._last_seed, weight.index, 2))
        else:  # served adapters (RoutedWeight): each on its own rows
            self._matmul(out, inp, weight.base, bias, trans_w)
            weight.bank.add_deltas(weight.name, out, inp)

    def _matmul_bwd(self, dinp: np.ndarray, dweight: np.ndarray | None,
                    dbias: np.ndarray | None, dout: np.ndarray, inp: np.ndarray,
                    weight: np.ndarray | QTensor | LoraWeight, trans_w: bool = False) -> None:
        """matmul_bwd; for a frozen weight (dweight None: an adapter is attached) only the
        input gradient dout @ W^T (matmul_fwd reading W transposed, or matmul_q_bwd for a
        quantized W), plus the adapter's part and its gradients at a LoRA target."""
        k = self.backend
        if dweight is not None:
            assert isinstance(weight, np.ndarray)  # a trained weight is float
            k.matmul_bwd(dinp, dweight, dbias, dout, inp, weight, trans_w)
            return
        if isinstance(weight, TokenHead):
            self._frozen_bwd(dinp, dout, weight.base, trans_w)
            assert isinstance(weight.rows, TokenRows)  # served rows are never trained
            weight.rows.head_bwd(dinp, dout, inp)
            return
        if not isinstance(weight, LoraWeight):
            self._frozen_bwd(dinp, dout, weight, trans_w)
            return
        assert self.adapter is not None
        base = weight.base
        self.adapter.backward(dinp, dout, inp, weight, mix_seed(self._last_seed, weight.index, 2),
                              lambda d, dy: self._frozen_bwd(d, dy, base, trans_w))

    def _frozen_bwd(self, dinp: np.ndarray, dout: np.ndarray, weight: np.ndarray | QTensor,
                    trans_w: bool) -> None:
        """dinp = dout @ W^T for a frozen weight (overwritten; the input is not read)."""
        if isinstance(weight, QTensor):
            self.backend.matmul_q_bwd(dinp, dout, weight.kernel_rows, weight.qtype)
        else:
            self.backend.matmul_fwd(dinp, dout, weight, None, not trans_w)

    def _zero_grads(self) -> None:
        """Zero the gradients a backward pass accumulates into (the adapter's too)."""
        self.flat_grads.fill(0)
        if self.adapter is not None:
            self.adapter.flat_grads.fill(0)

    def _embed_rows(self, a: Activations, positions: np.ndarray) -> None:
        """x0 = wte[tokens] + wpe[positions] for a decode_batch step (each row at its own
        position): the token rows (a quantized wte's dequantized), then a numpy gather."""
        wte = self._qweights.get("wte")
        if wte is not None:
            self.backend.embed_q_fwd(a.x0, a.tokens, wte.kernel_rows, wte.qtype)
        else:
            a.x0[...] = self._params["wte"][a.tokens]
        a.x0 += self._params["wpe"][positions[:, None]]

    def _lm_head(self, *views: Mapping[str, Any]) -> Any:
        """The output projection's tensor in the first of `views` that has it (per decoded
        token: no merged dict of every tensor)."""
        name = head_name(self.config)
        head = next(v[name] for v in views if name in v)
        rows = self._token_rows()
        return head if rows is None else TokenHead(head, rows)

    def _token_rows_fwd(self, a: Any) -> None:
        """An attached adapter's token rows (or served adapters', per row) into the
        embedded input a.x0."""
        rows = self._token_rows()
        if rows is not None:
            rows.embed_fwd(a.x0, a.tokens)

    def _token_rows(self) -> Any:
        """Whose token rows this forward adds: the attached adapter's, else the serving
        bank's (route_weights), else None."""
        return self.adapter.tokens if self.adapter is not None else self._routed_rows

    def _act_fwd(self, out: np.ndarray, inp: np.ndarray) -> None:
        kernel = self.backend.gelu_fwd if self.config.activation == "gelu" else self.backend.relu_fwd
        kernel(out, inp)

    def _act_bwd(self, dinp: np.ndarray, dout: np.ndarray, inp: np.ndarray) -> None:
        kernel = self.backend.gelu_bwd if self.config.activation == "gelu" else self.backend.relu_bwd
        kernel(dinp, dout, inp)

    # ---- backward: the forward line, reversed ------------------------------------------
    def _backward(self, a: Activations) -> None:
        if self.is_llama:
            return llama.backward(self, a)  # type: ignore[arg-type]
        k, cfg, P, G = self.backend, self.config, self._params, self._grads
        H, p, mmb = cfg.num_heads, a.dropout, self._matmul_bwd
        x_last = a.layers[-1].res3  # a.dln holds the head's input gradient (_head_loss)
        a.dres.fill(0)
        k.layernorm_bwd(a.dres, G["ln_f.weight"], G["ln_f.bias"], a.dln, x_last,
                        P["ln_f.weight"], a.lnf_mean, a.lnf_rstd)
        for i in reversed(range(cfg.num_layers)):
            L, D, la = self._p_layers[i], self._g_layers[i], a.layers[i]
            x_in = a.layers[i - 1].res3 if i > 0 else a.x0
            if a.recompute and i < cfg.num_layers - 1:  # the shared buffers hold layer i + 1
                self._block_fwd(i, L, la, x_in, p, None, None)
            dbranch = a.dres
            if p:
                k.dropout_bwd(a.dbranch, a.dres, p, mix_seed(self._last_seed, i, 1))
                dbranch = a.dbranch
            mmb(a.dfch, D.fcproj_w, D.fcproj_b, dbranch, la.fch_act, L.fcproj_w)
            self._act_bwd(a.dfch, a.dfch, la.fch)
            mmb(a.dln, D.fc_w, D.fc_b, a.dfch, la.ln2, L.fc_w)
            k.layernorm_bwd(a.dres, D.ln2_w, D.ln2_b, a.dln, la.res2, L.ln2_w,
                            la.ln2_mean, la.ln2_rstd)
            dbranch = a.dres
            if p:
                k.dropout_bwd(a.dbranch, a.dres, p, mix_seed(self._last_seed, i, 0))
                dbranch = a.dbranch
            mmb(a.datty, D.proj_w, D.proj_b, dbranch, la.atty, L.proj_w)
            k.attention_bwd(a.dqkv, a.datty, la.qkv, la.atty, la.att, H)
            mmb(a.dln, D.attn_w, D.attn_b, a.dqkv, la.ln1, L.attn_w)
            k.layernorm_bwd(a.dres, D.ln1_w, D.ln1_b, a.dln, x_in, L.ln1_w,
                            la.ln1_mean, la.ln1_rstd)
        if self.adapter is None:  # a frozen base's embeddings get no gradient
            k.encoder_bwd(G["wte"], G["wpe"], a.dres, a.tokens, 0)
        elif self.adapter.tokens is not None:  # an adapter's token rows do
            self.adapter.tokens.embed_bwd(a.dres, a.tokens)

    # ---- incremental decoding (used by sllm.generate) ------------------------------------
    def new_cache(self, batch: int = 1) -> KVCache:
        """An empty KV cache for `batch` sequences."""
        cfg = self.config
        budget.check_bytes(2 * cfg.num_layers * batch * cfg.max_seq_len * cfg.kv_heads
                           * cfg.head_dim * 4, f"a KV cache for {batch} x {cfg.max_seq_len} positions",
                           self.backend)
        return KVCache(self.backend, self.config, batch)

    def decode(self, tokens: Any, cache: KVCache) -> np.ndarray:
        """Run new tokens (B, Tn) at positions cache.pos.. through the model, appending their
        keys and values to the cache; returns the logits of the last position (B, V)."""
        t, cfg = np.asarray(tokens), self.config
        if t.shape == (1, 1) and t.dtype.kind in "iu" and cache.pos < cfg.max_seq_len and \
                0 <= (token := int(t[0, 0])) < cfg.vocab_size:
            # one token at batch 1 (each step of generate), its checks passed: _run_forward's
            # lines for a KV-cache step (no dropout), without its checks of any shape (1.2 us)
            acts = self._activations(1, 1, False)
            acts.tokens[0, 0] = token
            if self.adapter is not None:
                self.adapter.dropout = 0.0
            self._forward(acts, 0.0, cache)
        else:
            if cache.pos + t.shape[-1] > cfg.max_seq_len:
                raise ValueError(f"KV cache full: {cache.pos} + {t.shape[-1]} positions exceed "
                                 f"max_seq_len {cfg.max_seq_len}")
            acts = self._run_forward(t, grads=False, cache=cache)
        cache.pos += acts.shape[1]
        return acts.logits[:, -1].copy()

    def decode_batch(self, tokens: Any, cache: KVCache, slots: Any, positions: Any,
                     copy: bool = True) -> np.ndarray:
        """One continuous-batching step: sequence b feeds tokens[b] at positions[b] of cache
        slot slots[b] (its own length; slots distinct). Returns the next-token logits (B, V).
        Row b equals decode() of that sequence alone, whatever else is in the batch.
        copy=False returns the model's own buffer instead of a copy (the engine reads it
        before the next step, which overwrites it)."""
        t = self._check_tokens(np.asarray(tokens).reshape(-1, 1))
        B, S, limit = t.shape[0], len(cache.k[0]) if cache.k else 0, self.config.max_seq_len
        sl = np.ascontiguousarray(slots, dtype=np.int32).reshape(-1)
        ps = np.ascontiguousarray(positions, dtype=np.int32).reshape(-1)
        if sl.shape != (B,) or ps.shape != (B,):
            raise ValueError(f"need one slot and one position per token ({B}), "
                             f"got {sl.size} and {ps.size}")
        # a step's few rows: Python's min/max of lists beat numpy's reductions
        sll, psl = sl.tolist(), ps.tolist()
        if min(sll) < 0 or max(sll) >= S or len(set(sll)) != B:
            raise ValueError(f"slots must be distinct and in [0, {S}), got {sll}")
        if min(psl) < 0 or max(psl) >= limit:
            raise ValueError(f"positions must be in [0, max_seq_len {limit}), got {psl}")
        acts = self._batch_acts.get(B)
        if acts is None:
            acts = self._batch_acts[B] = self._new_activations(B, 1, False)
        acts.tokens[...] = t
        self._forward(acts, 0.0, cache, (sl, ps))
        logits = acts.logits[:, 0, :]
        return np.array(logits) if copy else logits

    def prefill_batch(self, prompts: list[list[int]], cache: KVCache, slots: Any
                      ) -> np.ndarray:
        """Prefill several prompts in one forward: prompt b (its own length) goes to
        positions 0.. of empty cache slot slots[b] (distinct), as decode() of it alone on
        cache.slot(slots[b]) puts it. Returns each prompt's next-token logits (B, V); row b
        and the slot's keys and values equal that decode()'s (the matmuls take every
        prompt's rows at once, each prompt attends over its own slot alone)."""
        lengths = [len(p) for p in prompts]
        if not prompts or min(lengths) < 1:
            raise ValueError(f"need at least one prompt, none empty, got lengths {lengths}")
        T, S = max(lengths), len(cache.k[0]) if cache.k else 0
        sl = [int(s) for s in slots]
        if len(sl) != len(prompts) or len(set(sl)) != len(sl) or min(sl) < 0 or max(sl) >= S:
            raise ValueError(f"need one distinct slot in [0, {S}) per prompt, got {sl}")
        if cache.pos:
            raise ValueError("prefill_batch writes slots from position 0: pass the whole "
                             "cache, not one that has advanced")
        padded = np.zeros((len(prompts), T), np.int64)
        for b, p in enumerate(prompts):
            padded[b, :len(p)] = p
        t = self._check_tokens(padded)
        acts = self._activations(t.shape[0], T, False)
        acts.tokens[...] = t
        if self.adapter is not None:  # as decode(): no dropout in a KV-cache step
            self.adapter.dropout = 0.0
        self._forward(acts, 0.0, cache, None, Prompts(sl, lengths))
        return np.array(acts.logits[:, -1, :])


# ---- building a model from a file (the formats themselves read plain data) ----------------
def load_model(path: str | os.PathLike[str], backend: Any = "auto", mmap: bool = True) -> SLLM:
    """Read a model file (sllm.serialize) into a new SLLM on `backend` (eval mode), with
    .tokenizer and .metadata attached."""
    from .serialize import read_model_file
    mf = read_model_file(path, mmap=mmap)
    quantized = {n: (qtype, mf.tensors[n]) for n, (qtype, _) in mf.quantized.items()}
    model = SLLM(mf.config, backend=backend, init=None, quantized=quantized)
    for name, param in model.parameters().items():
        param[...] = mf.tensors[name]
    model.tokenizer, model.metadata = mf.tokenizer, mf.metadata
    return model.eval()


def load_json(path: str | os.PathLike[str], backend: Any = "auto") -> SLLM:
    """Read a JSON interchange model (sllm.interchange) into a new SLLM on `backend`."""
    from .interchange import read_json
    doc = read_json(path)
    model = SLLM(doc.config, backend=backend, init=None)
    for name, param in model.parameters().items():
        param[...] = doc.weights[name]
    model.tokenizer, model.metadata = doc.vocab, doc.metadata
    return model.eval()
