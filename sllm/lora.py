"""LoRA adapters: low-rank updates of chosen matmul weights, trained with the base frozen.

For a target weight W stored (in, out) as sllm stores matmul weights, the adapted layer is
(PEFT's and llama.cpp's math, docs/finetune.md)

    y = x @ W (+ bias) + s * ((dropout(x) @ A) @ B),     s = alpha / rank,

with A (in, rank) drawn from U(-1/sqrt(in), 1/sqrt(in)) and B (rank, out) zero, so a fresh
adapter leaves the model unchanged. An Adapter is plain data (config, tensors named
"<weight>.lora_a" / ".lora_b", the base's fingerprint) and a file in the SLLM container.
`model.attach_adapter(adapter)` turns each target into a LoraWeight: the model's matmul
call site (SLLM._matmul / _matmul_bwd) then adds the delta (`lora_delta`) and, in
backward, fills the adapter's gradients while the base gets none (no base gradient
buffer, no base optimizer state: the optimizer runs over the Attached adapter's own flat
buffers). The shared contract is /work/wt/LORA-SPEC.md's, kept in docs/finetune.md.
JavaScript twin (the browser's adapters, the same file and math): sllm/web/lora.js.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import lora_tokens
from .budget import LORA_ROWS, FrozenBase
from .config import ModelConfig
from .errors import ConfigError, FormatError, LoraError
from .layout import ALIGN, embedding_name, parameter_shapes
from .quant import QTensor
from .validate import check_int, check_number

if TYPE_CHECKING:
    from .backends.base import Backend
    from .model import SLLM

__all__ = ["LoraConfig", "Adapter", "Attached", "LoraWeight", "LoraError", "fingerprint",
           "lora_delta", "merge", "target_names", "frozen_base", "ADAPTER_FILE", "TARGETS"]

ADAPTER_FILE = "adapter.sllm"  # what `sllm finetune` writes into its run directory
KIND = "lora-adapter"
# The weight-name suffixes each --lora-targets group stands for, per family.
TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "gpt2": {"attn": ("attn.c_attn.weight", "attn.c_proj.weight"),
             "mlp": ("mlp.c_fc.weight", "mlp.c_proj.weight")},
    "llama": {"attn": ("self_attn.qkv_proj.weight", "self_attn.o_proj.weight"),
              "mlp": ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")},
}


@dataclass(frozen=True)
class LoraConfig:
    """rank R >= 1, alpha > 0 (None: 2 * rank), targets "attn" | "mlp" | "all" | a comma
    list of weight-name suffixes, dropout 0 <= p < 1 on the adapter's input (PEFT's)."""

    rank: int = 8
    alpha: float | None = None
    targets: str = "all"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_int("lora_rank", self.rank, 1)
        if self.alpha is None:
            object.__setattr__(self, "alpha", float(2 * self.rank))
        object.__setattr__(self, "alpha", float(check_number("lora_alpha", self.alpha, 0.0,
                                                              lo_open=True)))
        object.__setattr__(self, "dropout", float(check_number(
            "lora_dropout", self.dropout, 0.0, 1.0, hi_open=True)))
        if not isinstance(self.targets, str) or not self.targets.strip():
            raise ConfigError(f"lora_targets (--lora-targets) must be attn, mlp, all or a comma "
                              f"list of weight names, got {self.targets!r}")

    @property
    def scale(self) -> float:
        """s = alpha / rank."""
        assert self.alpha is not None  # __post_init__ fills it
        return self.alpha / self.rank


def target_names(config: ModelConfig, targets: str) -> list[str]:
    """The full names of the weights `targets` selects in a model of `config`, in layout
    order; ConfigError naming a suffix that matches nothing, with the valid ones."""
    groups = TARGETS[config.architecture]
    valid = [s for group in groups.values() for s in group]
    suffixes: list[str] = []
    for part in (p.strip() for p in targets.split(",")):
        if part == "all":
            suffixes += valid
        elif part in groups:
            suffixes += groups[part]
        elif part in valid:
            suffixes.append(part)
        else:
            raise ConfigError(f"--lora-targets: {part!r} matches no weight of this "
                              f"{config.architecture} model; choose attn, mlp, all or "
                              f"some of {', '.join(valid)}")
    names = [n for n, _ in parameter_shapes(config) if any(n.endswith("." + s) for s in suffixes)]
    return names


def frozen_base(model: SLLM, config: LoraConfig) -> FrozenBase:
    """What training an adapter of `config` on `model` holds besides activations, for
    sllm.budget: the base as the model stores it (quantized rows for QLoRA), the adapter's
    scalars, its widest target and rank."""
    shapes = [_weight_shape(model.config, n) for n in target_names(model.config, config.targets)]
    sizes = [s for s in shapes if s is not None]
    stored = model.flat_params.nbytes + sum(q.nbytes for q in model.quantized_weights().values())
    return FrozenBase(stored, sum(config.rank * (i + o) for i, o in sizes),
                      max((max(s) for s in sizes), default=0), config.rank)


def fingerprint(model: SLLM) -> str:
    """sha256 (hex) over the base's config JSON (less dropout, a training setting) and its
    tensors' bytes as the model holds them (quantized rows for a quantized model)."""
    h = hashlib.sha256()
    cfg = {k: v for k, v in model.config.to_dict().items() if k != "dropout"}
    h.update(json.dumps(cfg, sort_keys=True).encode())
    tensors: dict[str, Any] = {**model.parameters(),
                               **{n: q.data for n, q in model.quantized_weights().items()}}
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).data.cast("B"))
    return h.hexdigest()


def _weight_shape(config: ModelConfig, name: str) -> tuple[int, int] | None:
    """(in, out) of layer weight `name` of a model of `config`, or None when it names no
    matmul weight a LoRA may target. Reads a one-layer layout: a forged layer count in
    an adapter file costs nothing."""
    prefix = "model.layers." if config.architecture == "llama" else "h."
    head, _, rest = name[len(prefix):].partition(".") if name.startswith(prefix) else ("", "", "")
    suffixes = [s for group in TARGETS[config.architecture].values() for s in group]
    if not head.isdigit() or int(head) >= config.num_layers or rest not in suffixes:
        return None
    shapes = dict(parameter_shapes(config.replace(num_layers=1)))
    shape = shapes[prefix + "0." + rest]
    return shape[0], shape[1]


@dataclass
class Adapter:
    """A LoRA adapter: its config, target weight names, tensors {"<w>.lora_a": (in, R),
    "<w>.lora_b": (R, out)} and its base (fingerprint, architecture, name, config)."""

    config: LoraConfig
    targets: list[str]
    tensors: dict[str, np.ndarray]
    base: dict[str, Any]
    base_config: ModelConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    extra_tensors: dict[str, np.ndarray] = field(default_factory=dict)  # a checkpoint's
    token_ids: list[int] = field(default_factory=list)  # trainable token rows (lora_tokens)

    @classmethod
    def create(cls, model: SLLM, config: LoraConfig, seed: int = 0,
               token_ids: Iterable[int] = ()) -> Adapter:
        """A fresh adapter for `model`: A ~ U(-1/sqrt(in), 1/sqrt(in)) from `seed`, B = 0;
        and trainable rows for `token_ids` (sllm.lora_tokens), starting as the base's."""
        check_int("seed", seed, 0, 2**63 - 1)
        ids = lora_tokens.check_ids(token_ids, model.config.vocab_size)
        names = target_names(model.config, config.targets)
        rng = np.random.default_rng(seed)
        tensors = {}
        for name in names:
            shape = _weight_shape(model.config, name)
            assert shape is not None  # target_names gives matmul weights only
            n_in, n_out = shape
            if not 1 <= config.rank <= min(n_in, n_out):
                raise ConfigError(f"lora_rank (--lora-rank) {config.rank} must be between 1 and "
                                  f"{min(n_in, n_out)}, the width of {name} ({n_in} x {n_out})")
            bound = 1.0 / np.sqrt(n_in)
            tensors[name + ".lora_a"] = rng.uniform(-bound, bound, (n_in, config.rank)
                                                    ).astype(np.float32)
            tensors[name + ".lora_b"] = np.zeros((config.rank, n_out), np.float32)
        base = {"fingerprint": fingerprint(model), "architecture": model.config.architecture,
                "name": str(model.metadata.get("source", "")) if model.metadata else ""}
        if ids:
            tensors.update(lora_tokens.base_rows(model, ids))
        return cls(config, names, tensors, base, model.config, token_ids=ids)

    @property
    def scale(self) -> float:
        """s = alpha / rank."""
        return self.config.scale

    def num_parameters(self) -> int:
        """Trainable scalars of the adapter."""
        return sum(t.size for t in self.tensors.values())

    def check_base(self, model: SLLM) -> None:
        """LoraError unless `model` is the base this adapter was made for."""
        mine, theirs = self.base["fingerprint"], fingerprint(model)
        if mine != theirs:
            raise LoraError(f"this adapter was made for another base model (fingerprint "
                            f"{mine[:12]}), not this one ({theirs[:12]}); load it onto the "
                            f"model it was trained on")

    def save(self, path: str | os.PathLike[str], overwrite: bool = False,
             extra_tensors: dict[str, np.ndarray] | None = None,
             metadata: dict[str, Any] | None = None, dtype: str = "f32") -> None:
        """Write the adapter atomically in the SLLM container (sllm.serialize), its tensors
        in `dtype` "f32" or "f16" (half the bytes; `sllm finetune` writes f16 adapters).

        A training checkpoint (sllm.checkpoint) adds its optimizer buffers as extra tensors
        named "optim.<buffer>" and its state under metadata["checkpoint"]."""
        from .finite import check_f16_range
        from .outputs import check_output
        from .serialize import DTYPE_CODES, DTYPES, Section, _json_bytes, write_container
        if dtype not in DTYPE_CODES:
            raise ValueError(f"adapter dtype must be f32 or f16, got {dtype!r}")
        if dtype == "f16":
            check_f16_range(self.tensors)
        check_output(path, overwrite=overwrite)
        meta = {**self.metadata, **(metadata or {}), "kind": KIND, "rank": self.config.rank,
                "alpha": self.config.alpha, "dropout": self.config.dropout,
                "targets": list(self.targets), "target_option": self.config.targets,
                "base": dict(self.base)}
        if self.token_ids:
            meta["token_ids"] = list(self.token_ids)
        cfg = self.base_config.to_dict()
        own = DTYPES[DTYPE_CODES[dtype]][1]
        # token rows stay f32: f16 rounding would move the rows of untrained ids off the base's
        tensors = [(n, np.ascontiguousarray(t, "<f4"), DTYPE_CODES["f32"], t.shape)
                   if n.endswith(lora_tokens.SUFFIX) else
                   (n, np.ascontiguousarray(t, own), DTYPE_CODES[dtype], t.shape)
                   for n, t in self.tensors.items()]
        tensors += [(n, np.ascontiguousarray(t, "<f4"), DTYPE_CODES["f32"], t.shape)
                    for n, t in (extra_tensors or {}).items()]
        write_container(path, self.base_config,
                        [(Section.CONFIG, _json_bytes(cfg)), (Section.METADATA, _json_bytes(meta))],
                        tensors)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: SLLM | None = None) -> Adapter:
        """Read and validate an adapter file (FormatError when malformed); when `model` is
        given, LoraError unless it is the adapter's base."""
        from .serialize import read_float_tensors
        base_config, meta, tensors = read_float_tensors(path)
        adapter = _from_file(path, base_config, meta, tensors)
        if model is not None:
            adapter.check_base(model)
        return adapter


def _from_file(path: Any, base_config: ModelConfig, meta: dict[str, Any],
               tensors: dict[str, np.ndarray]) -> Adapter:
    """An Adapter from a container's parts; FormatError when they are not an adapter's."""
    if meta.get("kind") != KIND:
        raise FormatError(f"{path}: not a LoRA adapter (metadata kind {meta.get('kind')!r})")
    base, targets = meta.get("base"), meta.get("targets")
    if not (isinstance(base, dict) and isinstance(base.get("fingerprint"), str)
            and isinstance(targets, list) and targets
            and all(isinstance(t, str) for t in targets)):
        raise FormatError(f"{path}: adapter metadata needs 'base' with a 'fingerprint' and a "
                          f"non-empty list of 'targets'")
    try:
        config = LoraConfig(meta.get("rank", 0), meta.get("alpha"),
                            meta.get("target_option", "all"), meta.get("dropout", 0.0))
    except (ConfigError, TypeError) as e:
        raise FormatError(f"{path}: adapter metadata: {e}") from None
    expected = set()
    for name in targets:
        shape = _weight_shape(base_config, name)
        if shape is None or name + ".lora_a" in expected:
            raise FormatError(f"{path}: adapter target {name[:80]!r} is not a matmul weight of "
                              f"its base")
        for suffix, need in ((".lora_a", (shape[0], config.rank)),
                             (".lora_b", (config.rank, shape[1]))):
            t = tensors.get(name + suffix)
            if t is None or t.shape != need:
                raise FormatError(f"{path}: tensor {name + suffix!r} should have shape {need}, "
                                  f"found {None if t is None else t.shape}")
            expected.add(name + suffix)
    ids = _token_ids(path, base_config, meta)
    for name in lora_tokens.row_names(base_config) if ids else []:
        t, need = tensors.get(name), (len(ids), base_config.embedding_dim)
        if t is None or t.shape != need:
            raise FormatError(f"{path}: tensor {name!r} should have shape {need}, found "
                              f"{None if t is None else t.shape}")
        expected.add(name)
    optim = {n: t for n, t in tensors.items() if n.startswith("optim.")} \
        if isinstance(meta.get("checkpoint"), dict) else {}
    if extra := sorted(set(tensors) - expected - set(optim)):
        raise FormatError(f"{path}: tensor {extra[0][:80]!r} is not one of the adapter's")
    own = {n: t for n, t in tensors.items() if n in expected}
    return Adapter(config, list(targets), own, dict(base), base_config,
                   {k: v for k, v in meta.items() if k not in ("kind", "rank", "alpha", "dropout",
                                                                "targets", "target_option",
                                                                "base", "token_ids")},
                   optim, ids)


def _token_ids(path: Any, base_config: ModelConfig, meta: dict[str, Any]) -> list[int]:
    """The adapter's "token_ids" (none when absent); FormatError unless a list of unique
    ids of the base's vocabulary."""
    ids = meta.get("token_ids", [])
    if not isinstance(ids, list):
        raise FormatError(f"{path}: adapter metadata 'token_ids' must be a list of token ids")
    try:
        return lora_tokens.check_ids(ids, base_config.vocab_size, "adapter metadata token_ids")
    except ConfigError as e:
        raise FormatError(f"{path}: {e}") from None


# ---- the adapter attached to a model ------------------------------------------------------
def lora_delta(backend: Backend, out_rows: Any, inp_rows: Any, A: Any, B: Any, scale: float,
               t: Any = None, delta: Any = None, mask: Any = None) -> None:
    """out_rows (N, out) += scale * (inp_rows (N, in) @ A) @ B: two matmul_fwd and a residual
    add. t (N, R) and delta (N, out) are scratch (allocated when None); on return t holds
    scale * inp_rows @ A, which the backward pass reads. mask (N, R), when given, multiplies
    t before B: sllm.lora_bank stacks several adapters' A side by side (and their B one
    under the other), and each row keeps its own adapter's columns, times its scale."""
    N = out_rows.shape[0]
    t = backend.empty((N, A.shape[1])) if t is None else t
    delta = backend.empty(out_rows.shape) if delta is None else delta
    backend.matmul_fwd(t, inp_rows, A, None)
    if scale != 1.0:
        np.multiply(t, np.float32(scale), out=t)  # scale the (N, R) product, the small one
    if mask is not None:
        np.multiply(t, mask, out=t)
    backend.matmul_fwd(delta, t, B, None)
    backend.residual_fwd(out_rows, out_rows, delta)


@dataclass
class LoraWeight:
    """What a targeted weight is while an adapter is attached: the frozen base (float or
    quantized), the adapter's A and B and their gradient views, and its index (which
    decorrelates the dropout masks of the targets)."""

    name: str
    base: np.ndarray | QTensor
    a: np.ndarray
    b: np.ndarray
    da: np.ndarray
    db: np.ndarray
    index: int


class Attached:
    """An adapter attached to a model: its tensors in one flat buffer on the model's backend
    (and one for their gradients), so that an Optimizer runs over it as over a model
    (`backend`, `flat_params`, `flat_grads`, `layout.total`, `layout.decay_count`)."""

    def __init__(self, model: SLLM, adapter: Adapter):
        self.adapter, self.backend = adapter, model.backend
        names = list(adapter.tensors)
        offsets, total = {}, 0
        for name in names:
            offsets[name] = total
            total += -(-adapter.tensors[name].size // ALIGN) * ALIGN
        self.flat_params, self.flat_grads = self.backend.zeros(total), self.backend.zeros(total)
        self.layout = _FlatLayout(total)
        views = {n: self.flat_params[o:o + adapter.tensors[n].size].reshape(
            adapter.tensors[n].shape) for n, o in offsets.items()}
        grads = {n: self.flat_grads[o:o + adapter.tensors[n].size].reshape(
            adapter.tensors[n].shape) for n, o in offsets.items()}
        for name, view in views.items():
            view[...] = adapter.tensors[name]
        adapter.tensors = views  # training updates the adapter in place
        self.grads = grads
        self.scale, self.dropout = adapter.scale, 0.0  # dropout: this forward's (model sets it)
        weights: dict[str, np.ndarray | QTensor] = {**model.parameters(),
                                                    **model.quantized_weights()}
        self.weights = {n: LoraWeight(n, weights[n], views[n + ".lora_a"], views[n + ".lora_b"],
                                      grads[n + ".lora_a"], grads[n + ".lora_b"], i)
                        for i, n in enumerate(adapter.targets)}
        self._work: dict[str, np.ndarray] = {}  # flat scratch per role, grown to the largest need
        self.tokens = lora_tokens.TokenRows(model, adapter.token_ids, views, grads) \
            if adapter.token_ids else None

    def work(self, role: str, rows: int, width: int) -> np.ndarray:
        """A (rows, width) scratch view of the flat buffer of `role`. One buffer per role is
        shared by every target and every batch shape (it grows to the largest request), so
        the adapter's scratch is LORA_ROWS rows of the widest target, whatever the batch."""
        buf = self._work.get(role)
        if buf is None or buf.size < rows * width:
            if buf is not None:
                self.backend.free(buf)
            buf = self._work[role] = self.backend.empty(rows * width)
        return buf[:rows * width].reshape(rows, width)

    def release_scratch(self) -> None:
        """Free the work buffers."""
        for buf in self._work.values():
            self.backend.free(buf)
        self._work.clear()

    def detach(self) -> Adapter:
        """Copy the tensors back to numpy, free the backend buffers; returns the adapter."""
        self.adapter.tensors = {n: np.array(t) for n, t in self.adapter.tensors.items()}
        self.release_scratch()
        for buf in (self.flat_params, self.flat_grads):
            self.backend.free(buf)
        return self.adapter

    def gradients(self) -> dict[str, np.ndarray]:
        """Views of the adapter's gradients by tensor name."""
        return dict(self.grads)

    def num_parameters(self) -> int:
        """Trainable scalars."""
        return self.adapter.num_parameters()

    # ---- forward and backward at one matmul call site ----------------------------------
    def forward(self, out: Any, inp: Any, w: LoraWeight, seed: int) -> None:
        """out += s * (dropout(inp) @ A) @ B (the base matmul already wrote out), LORA_ROWS
        rows at a time (each row's delta is its own: the same numbers as all rows at once)."""
        k = self.backend
        x, o = self._input(inp, seed), _rows(out)
        for r in _row_blocks(len(o), LORA_ROWS):
            n = r.stop - r.start
            lora_delta(k, o[r], x[r], w.a, w.b, self.scale, self.work("t", n, w.a.shape[1]),
                       self.work("wide", n, o.shape[1]))

    def backward(self, dinp: Any, dout: Any, inp: Any, w: LoraWeight, seed: int,
                 frozen: Callable[[Any, Any], None]) -> None:
        """dinp = the frozen base's input gradient (frozen(dinp_rows, dout_rows) writes it)
        + the adapter's; dA, dB += theirs. LORA_ROWS rows at a time, dA and dB accumulating
        over the blocks (with adapter dropout all rows at once: the mask of dropout_bwd
        spans the whole input). Each block's input rows are read before its dinp rows are
        written, so dinp may be the input's own memory (sllm.activations under recompute)."""
        k, s = self.backend, np.float32(self.scale)
        x, dy, d = self._input(inp, seed), _rows(dout), _rows(dinp)
        R = w.a.shape[1]
        for r in _row_blocks(len(x), len(x) if self.dropout else LORA_ROWS):
            n = r.stop - r.start
            t, dt, dx = self.work("t", n, R), self.work("dt", n, R), self.work("wide", n, x.shape[1])
            k.matmul_fwd(t, x[r], w.a, None)
            np.multiply(t, s, out=t)                       # t = s * x A, forward's input to B
            k.matmul_bwd(dt, w.db, None, dy[r], t, w.b)    # dt = dy B^T; dB += t^T dy
            np.multiply(dt, s, out=dt)                     # through the scale
            k.matmul_bwd(dx, w.da, None, dt, x[r], w.a)    # dx = dt A^T; dA += x^T dt
            if self.dropout:
                k.dropout_bwd(dx, dx, self.dropout, seed)
            frozen(d[r], dy[r])                            # the base's part, over x[r] if shared
            k.residual_fwd(d[r], d[r], dx)

    def _input(self, inp: Any, seed: int) -> Any:
        """The adapter's input rows: inp, or (adapter dropout) its dropped-out copy, the same
        mask in forward and backward (same seed)."""
        x = _rows(inp)
        if not self.dropout:
            return x
        xd = self.work("xd", *x.shape)
        self.backend.dropout_fwd(xd, x, self.dropout, seed)
        return xd


def _row_blocks(n: int, rows: int) -> list[slice]:
    """Consecutive slices of at most `rows` of range(n)."""
    return [slice(r0, min(n, r0 + rows)) for r0 in range(0, n, rows)]


@dataclass(frozen=True)
class _FlatLayout:
    """The two numbers an Optimizer reads of a layout: every adapter tensor is a matrix, so
    weight decay applies to all of it (as torch's AdamW over PEFT's parameters)."""

    total: int

    @property
    def decay_count(self) -> int:
        """Weight decay covers the whole buffer."""
        return self.total


def _rows(a: Any) -> Any:
    """(..., C) -> (N, C) view."""
    return a.reshape(-1, a.shape[-1])


def merge(model: SLLM, adapter: Adapter) -> SLLM:
    """W += s * A @ B for each target of `adapter`, and its token rows written over the
    embedding's (and an untied head's), in place on a float base; returns model.

    The merged model's logits equal the base with the adapter attached (float32 rounding).
    A quantized base is refused: merge on the float32 base, then quantize."""
    if model.quantized_weights():
        raise LoraError(f"cannot merge into a quantized model ({model.qtype}); merge the "
                        f"adapter into the float32 base, then quantize the result")
    if model.adapter is not None:
        raise LoraError("detach the attached adapter before merging (model.detach_adapter())")
    adapter.check_base(model)
    params = model.parameters()
    for name in adapter.targets:
        a = adapter.tensors[name + ".lora_a"].astype(np.float64)
        b = adapter.tensors[name + ".lora_b"].astype(np.float64)
        params[name][...] = params[name] + adapter.scale * (a @ b)
    if ids := adapter.token_ids:
        emb = embedding_name(model.config)
        params[emb][ids] = adapter.tensors[emb + lora_tokens.SUFFIX]
        if not model.config.tie_embeddings:
            params[lora_tokens.HEAD][:, ids] = adapter.tensors[lora_tokens.HEAD
                                                               + lora_tokens.SUFFIX].T
    return model
