"""One memory budget, checked before anything large is allocated.

The estimate adds what a model and a run hold, from the config alone (closed form, no
layout built): parameters and gradients (float32 each), optimizer state (Adam m and v,
SGD momentum), the activations kept for one batch (sllm/activations.py's buffers; the
attention state has the backend's own attention_saved_shape), the temporaries a backend's
kernels create (the numpy reference makes several (B,H,T,T) and (B*T,V) arrays), the
Python objects per tensor, and the corpus while it is tokenized. It is compared with the
budget: `--max-memory` / SLLM_MAX_MEMORY when given, else 90% of the memory available
now (MemAvailable, within the cgroup's limit), and for a wasm backend never more than its
linear memory can still hold. A request over the budget raises BudgetError with the size
it needs and the largest batch that fits, in well under a millisecond.

Loaders use the same budget for the bytes they are about to read (`check_read`).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .config import ModelConfig
from .errors import ConfigError, SLLMError

F32 = 4
TENSOR_OVERHEAD = 1024  # bytes of Python objects per parameter tensor (views, dicts, slots)
BUFFER_OVERHEAD = 256   # per activation buffer
BASELINE = 64 << 20     # the interpreter, numpy and the backend's own code and tables
CORPUS_FACTOR = 16      # bytes held per corpus byte while tokenizing (text, words, ids)
SHARE = 0.9             # of the available memory: the rest is left to the machine
OPTIMIZER_BUFFERS = {"adam": 2, "adamw": 2, "sgd": 1}
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_limit: int | None = None


class BudgetError(SLLMError, MemoryError):
    """A request needs more memory than the budget allows (nothing was allocated)."""


def parse_size(value: Any, name: str = "max_memory") -> int:
    """Bytes from 123456, "512M", "8G", "1.5GiB" (binary units); ConfigError naming name."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) > 0:
        return int(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.I) \
        if isinstance(value, str) else None
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()]) if match else 0
    if size <= 0:
        raise ConfigError(f"{name} (--{name.replace('_', '-')}) must be a size such as 512M, "
                          f"8G or a number of bytes, got {value!r}")
    return size


def set_limit(value: Any) -> None:
    """Use `value` (bytes or "8G"; None: back to what the machine has) as the budget."""
    global _limit
    _limit = None if value is None else parse_size(value)


@contextlib.contextmanager
def limited(value: Any) -> Iterator[None]:
    """Within the block, `value` (when not None) is the budget; the previous one after."""
    global _limit
    previous = _limit
    if value is not None:
        _limit = parse_size(value)
    try:
        yield
    finally:
        _limit = previous


def fmt(n: float) -> str:
    """Bytes in binary units: '1.5 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def available(backend: Any = None) -> tuple[int, str]:
    """The budget in bytes and where it comes from."""
    if _limit is not None:
        total, source = _limit, "--max-memory"
    elif os.environ.get("SLLM_MAX_MEMORY"):
        total, source = parse_size(os.environ["SLLM_MAX_MEMORY"], "SLLM_MAX_MEMORY"), \
            "SLLM_MAX_MEMORY"
    else:
        total, source = _machine_available()
    memory = getattr(backend, "memory", None)  # wasm: linear memory has its own ceiling
    if memory is not None and hasattr(memory, "limit") and hasattr(memory, "in_use"):
        room = int(memory.limit) - int(memory.in_use())
        if room < total:
            total, source = room, f"{getattr(backend, 'name', 'wasm')} linear memory"
    return max(total, 0), source


def _machine_available() -> tuple[int, str]:
    """SHARE of MemAvailable (or of the free pages), capped by the cgroup's room."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return 1 << 62, "unknown (no limit applied)"
    cgroup = _cgroup_room()
    if cgroup is not None and cgroup < avail:
        return int(cgroup * SHARE), "90% of the cgroup's remaining memory"
    return int(avail * SHARE), "90% of the available memory"


def _cgroup_room() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            current = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - current, 0)


# ---- the estimate ----------------------------------------------------------------------
@dataclass
class Estimate:
    """Bytes by part; `per_row` is what one more sequence in the batch adds."""

    parts: dict[str, int] = field(default_factory=dict)
    per_row: int = 0

    @property
    def total(self) -> int:
        """All parts added up."""
        return sum(self.parts.values())

    def describe(self) -> str:
        """'parameters 1.0 MiB, gradients 1.0 MiB, ...' (parts above zero)."""
        return ", ".join(f"{k} {fmt(v)}" for k, v in self.parts.items() if v)


def _num_tensors(cfg: ModelConfig) -> int:
    return 12 * cfg.num_layers + 4 + (0 if cfg.tie_embeddings else 1)


def model_estimate(cfg: ModelConfig) -> Estimate:
    """A built model: parameters and gradients in float32, their Python objects, and the
    initializer's float64 temporary for the largest matrix."""
    n = cfg.num_parameters()
    C, V, F = cfg.embedding_dim, cfg.vocab_size, cfg.ffn_hidden_dim
    largest = max(V * C, cfg.max_seq_len * C, 3 * C * C, C * F)
    return Estimate({"parameters": n * F32, "gradients": n * F32,
                     "tensor objects": 2 * _num_tensors(cfg) * TENSOR_OVERHEAD,
                     "initialization": 2 * largest * F32})


@dataclass(frozen=True)
class FrozenBase:
    """A LoRA run's model as train_estimate counts it: the frozen base's bytes as it holds
    them (float32, or quantized rows for QLoRA), the adapter's trainable scalars, and the
    adapter's widest target and rank (its work buffers, sllm.lora.Attached.work)."""

    base_bytes: int
    adapter_parameters: int
    widest: int = 0
    rank: int = 0


def lora_model_estimate(cfg: ModelConfig, frozen: FrozenBase, optimizer: str) -> Estimate:
    """A LoRA run's model: the frozen base as stored, the adapter's tensors, gradients and
    optimizer state, gradient scratch for the norms (the base has no other gradient), and
    the adapter's work buffers (sllm.lora.LORA_ROWS rows)."""
    n, L, C = frozen.adapter_parameters, cfg.num_layers, cfg.embedding_dim
    norms = (2 * L + 1) * C * (1 if cfg.architecture == "llama" else 2)
    return Estimate({"frozen base": frozen.base_bytes, "adapter": n * F32,
                     "gradients": (n + norms) * F32,
                     "optimizer state": OPTIMIZER_BUFFERS.get(optimizer, 2) * n * F32,
                     "tensor objects": 2 * _num_tensors(cfg) * TENSOR_OVERHEAD,
                     "adapter scratch": LORA_ROWS * (frozen.widest + 2 * frozen.rank) * F32})


def _attention_saved(backend: Any, B: int, T: int, H: int) -> int:
    shape_of = getattr(backend, "attention_saved_shape", None)
    shape = shape_of(B, T, H) if shape_of is not None else (B, H, T, T)
    return math.prod(int(s) for s in shape)


# Rows of one adapter matmul at a time (sllm.lora.Attached): its scratch is (LORA_ROWS, width),
# not (N, width) per target, a few MiB at any batch.
LORA_ROWS = 1024
# Rows of logits a recomputing training step holds at once (sllm.activations makes them,
# the estimate counts them): 128 x a vocabulary of 8000 is 4 MiB.
HEAD_ROWS = 128


def activation_estimate(cfg: ModelConfig, B: int, T: int, backend: Any = None,
                        train: bool = True, recompute: bool = False,
                        frozen: bool = False) -> Estimate:
    """The buffers sllm.activations.Activations holds for a (B, T) batch, plus the
    temporaries of the backend's kernels (large for the numpy reference). recompute
    (training): one layer's buffers plus each layer's output, HEAD_ROWS rows of logits;
    GPT-2's branch outputs (and with a frozen base, training an adapter, its MLP
    activation) then live in the gradient scratch."""
    C, F, V, H, L = (cfg.embedding_dim, cfg.ffn_hidden_dim, cfg.vocab_size, cfg.num_heads,
                     cfg.num_layers)
    N, W, llama = B * T, cfg.qkv_width, cfg.architecture == "llama"
    recompute = recompute and train
    # llama (activations.LlamaActivations): SwiGLU keeps gate, up and their product, and
    # the backward adds an input gradient for up_proj; qkv is (H + 2*Hkv)*D wide (3C in GPT-2)
    widths = 7 * C + W + (3 if llama else 2) * F
    if recompute and not llama:
        widths -= 2 * C + (F if frozen else 0)
    per_layer = N * (widths + 4) + _attention_saved(backend, B, T, H)
    kept = 1 if recompute or not train else L  # the layers' shared set (sllm.activations)
    logit_rows = min(N, HEAD_ROWS) if recompute else N
    floats = N * (C + C + 2 + 1) + logit_rows * V + 2 * N + kept * per_layer + \
        (L - kept) * N * C
    if train:
        # GPT-2: dres, dbranch, dln (= datty) and one buffer for dqkv and dfch
        floats += N * (5 * C + W + 3 * F) if llama else N * (3 * C + max(W, F))
    name = getattr(backend, "name", "numpy")
    if name == "numpy" or backend is None:
        work = 4 * B * H * T * T + 3 * logit_rows * V + 2 * N * max(3 * C, F)
    else:  # the vocabulary-wide ones only over the rows of logits held at once
        work = max(N * max(3 * C, F), logit_rows * V)
    buffers = (15 * L + 8) * BUFFER_OVERHEAD
    return Estimate({"activations": floats * F32 + buffers, "kernel temporaries": work * F32})


def train_estimate(cfg: ModelConfig, B: int, T: int, backend: Any = None,
                   optimizer: str = "adamw", corpus_bytes: int = 0,
                   eval_batches: int = 0, recompute: bool = False,
                   frozen: FrozenBase | None = None) -> Estimate:
    """Everything a training run holds at its peak (eval_batches: the fixed validation
    batches, kept as int32 inputs and targets; recompute: activation checkpointing;
    frozen: a LoRA run, whose base has no gradient or optimizer state)."""
    if frozen is None:
        est = model_estimate(cfg)
        est.parts["optimizer state"] = OPTIMIZER_BUFFERS.get(optimizer, 2) * \
            cfg.num_parameters() * F32
    else:
        est = lora_model_estimate(cfg, frozen, optimizer)
    lora = frozen is not None
    acts = activation_estimate(cfg, B, T, backend, True, recompute, lora)
    est.parts.update(acts.parts)
    est.parts["corpus"] = corpus_bytes * CORPUS_FACTOR
    est.parts["validation batches"] = eval_batches * B * T * 2 * F32
    est.parts["runtime"] = BASELINE
    est.per_row = activation_estimate(cfg, 1, T, backend, True, recompute, lora).total - \
        BUFFER_OVERHEAD * (15 * cfg.num_layers + 8) + eval_batches * T * 2 * F32
    return est


# ---- the checks ------------------------------------------------------------------------
def check_train(cfg: ModelConfig, B: int, T: int, backend: Any = None,
                optimizer: str = "adamw", corpus_bytes: int = 0,
                eval_batches: int = 0, recompute: bool = False,
                frozen: FrozenBase | None = None) -> Estimate:
    """Refuse (BudgetError) a training run that cannot fit; returns the estimate (see
    train_estimate)."""
    est = train_estimate(cfg, B, T, backend, optimizer, corpus_bytes, eval_batches, recompute,
                         frozen)
    budget, source = available(backend)
    if est.total <= budget:
        return est
    fixed = est.total - B * est.per_row
    where = _backend_name(backend)
    held = est.parts["validation batches"]
    if fixed > budget:
        advice = (f"the model, its optimizer state and the corpus alone need {fmt(fixed)}: "
                  f"use a smaller config (fewer layers, a narrower embeddingDim, a shorter "
                  f"maxSeqLen or a smaller vocabulary)")
    elif held > budget // 2:  # not a batch-size problem: --batch-size 1 would not fit either
        advice = (f"--eval-batches {eval_batches} alone keeps {fmt(held)} of validation "
                  f"batches: ask for fewer")
    else:
        largest = (budget - fixed) // max(est.per_row, 1)
        advice = f"the largest --batch-size that fits is {largest}"
    raise BudgetError(f"training {cfg.num_parameters():,} parameters with batch {B} x {T}"
                      f"{where} needs about {fmt(est.total)} ({est.describe()}), but the "
                      f"budget is {fmt(budget)} ({source}); {advice}. Set --max-memory "
                      f"(or SLLM_MAX_MEMORY) to change the budget")


def check_model(cfg: ModelConfig, backend: Any = None) -> None:
    """Refuse building a model whose weights and gradients cannot fit."""
    est = model_estimate(cfg)
    budget, source = available(backend)
    if est.total > budget:
        raise BudgetError(f"a model of {cfg.num_parameters():,} parameters"
                          f"{_backend_name(backend)} needs {fmt(est.total)} "
                          f"({est.describe()}), but the budget is {fmt(budget)} ({source}); "
                          f"use a smaller config, or set --max-memory (or SLLM_MAX_MEMORY)")


def check_activations(cfg: ModelConfig, B: int, T: int, backend: Any = None,
                      train: bool = True, recompute: bool = False,
                      frozen: bool = False) -> None:
    """Refuse activation buffers for a (B, T) batch that cannot fit."""
    est = activation_estimate(cfg, B, T, backend, train, recompute, frozen)
    budget, source = available(backend)
    if est.total > budget:
        one = activation_estimate(cfg, 1, T, backend, train, recompute, frozen).total
        largest = budget // max(one, 1)
        raise BudgetError(f"a batch of {B} x {T}{_backend_name(backend)} needs "
                          f"{fmt(est.total)} ({est.describe()}), but the budget is "
                          f"{fmt(budget)} ({source}); the largest batch that fits is "
                          f"{largest}")


def check_read(path: Any, nbytes: int, factor: float = 1.0, what: str = "file") -> None:
    """Refuse reading a `what` of nbytes whose parsed form (nbytes * factor) cannot fit."""
    check_bytes(int(nbytes * factor), f"{path}: reading this {fmt(nbytes)} {what}")


SMALL = 1 << 20  # bytes: no machine refuses these (a small model's KV cache, per generate)


def check_bytes(need: int, what: str, backend: Any = None) -> None:
    """Refuse an allocation of `need` bytes described by `what` that cannot fit. Up to SMALL
    bytes are checked against a set limit (--max-memory, SLLM_MAX_MEMORY, a wasm backend's
    linear memory) only: reading the machine's free memory takes 60 us."""
    if need <= SMALL and _limit is None and not os.environ.get("SLLM_MAX_MEMORY") \
            and getattr(backend, "memory", None) is None:
        return
    budget, source = available(backend)
    if need > budget:
        raise BudgetError(f"{what} needs about {fmt(need)}, but the budget is {fmt(budget)} "
                          f"({source}); set --max-memory (or SLLM_MAX_MEMORY) to change it")


def _backend_name(backend: Any) -> str:
    name = getattr(backend, "name", None)
    return f" on {name}" if name else ""
