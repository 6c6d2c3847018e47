"""Checkpoints: model + optimizer buffers + trainer state + tokenizer + config in one SLLM file.

The optimizer's buffers (Adam m and v, SGD momentum) travel as extra tensors named
"optim.<buffer>"; the trainer's counters, the dropout step and the training config go in
the file's metadata; the tokenizer's dict in its tokenizer slot. Writes are atomic.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import FormatError, SLLMError

CHECKPOINT_KIND = "checkpoint"


class RunError(SLLMError, RuntimeError):
    """A run directory cannot be used (missing, corrupt, or holding another run)."""


@dataclass
class Checkpoint:
    """What load_checkpoint returns: the model (with tokenizer and metadata attached), the
    optimizer state (as Optimizer.state_dict()), and the trainer state."""

    model: Any
    optimizer_state: dict[str, Any]
    trainer_state: dict[str, Any]
    train_config: dict[str, Any]


def save_checkpoint(path: str | os.PathLike[str], model: Any, optimizer: Any,
                    tokenizer: dict[str, Any] | None, trainer_state: dict[str, Any],
                    train_config: dict[str, Any]) -> None:
    """Write everything needed to continue training exactly, atomically. A LoRA run (an
    adapter attached) writes its adapter, not the frozen base (resume reloads the base
    from init_from and checks it against the adapter's fingerprint)."""
    from .serialize import save_model
    state = optimizer.state_dict()
    extra = {f"optim.{name}": np.asarray(buf, dtype=np.float32)
             for name, buf in state["buffers"].items()}
    meta = {"kind": CHECKPOINT_KIND,
            "optimizer": {k: v for k, v in state.items() if k != "buffers"},
            "trainer": dict(trainer_state, dropout_step=int(model.dropout_step),
                            model_seed=int(model.seed)),
            "train_config": train_config}
    if model.adapter is not None:
        model.adapter.adapter.save(path, overwrite=True, extra_tensors=extra,
                                   metadata={"checkpoint": meta})
        return
    save_model(model, path, dtype="f32", tokenizer=tokenizer, metadata=meta,
               extra_tensors=extra)


def checkpoint_config(path: str | os.PathLike[str]) -> Any:
    """The model config a checkpoint holds (a LoRA checkpoint's: its base's), read without
    loading its tensors; FormatError when the file is not an SLLM container."""
    from .serialize import _open, parse_container
    return parse_container(memoryview(_open(path, mmap=True)), path, verify=False)[1]


def load_checkpoint(path: str | os.PathLike[str], backend: str = "auto",
                    base: Any = None) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; RunError when it is missing or is a
    plain model file, FormatError (from sllm.serialize) when it is corrupt. A LoRA run's
    checkpoint needs its `base` model: the adapter is attached to it (LoraError when the
    base is not the one the adapter was trained on)."""
    from .model import load_model
    from .serialize import read_model_file
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RunError(f"{path}: no checkpoint here")
    if base is not None:
        return _load_lora_checkpoint(path, base)
    try:
        mf = read_model_file(path, mmap=False)
    except FormatError as e:
        raise RunError(f"{path}: corrupt checkpoint ({e})") from None
    meta = mf.metadata or {}
    if meta.get("kind") != CHECKPOINT_KIND:
        raise RunError(f"{path} is a model file, not a training checkpoint")
    optim_meta = dict(meta["optimizer"])
    optim_meta["buffers"] = {name[len("optim."):]: np.array(t)
                             for name, t in mf.extra_tensors.items() if name.startswith("optim.")}
    model = load_model(path, backend=backend, mmap=False)
    model.metadata = {}  # the checkpoint's own metadata must not leak into later saves
    trainer = dict(meta["trainer"])
    model.dropout_step = int(trainer.pop("dropout_step"))
    model.seed = int(trainer.pop("model_seed"))
    return Checkpoint(model, optim_meta, trainer, dict(meta.get("train_config", {})))


def _load_lora_checkpoint(path: str, base: Any) -> Checkpoint:
    from .lora import Adapter
    adapter = Adapter.load(path, base)
    meta = adapter.metadata.pop("checkpoint", None)
    if not isinstance(meta, dict) or meta.get("kind") != CHECKPOINT_KIND:
        raise RunError(f"{path} is an adapter file, not a training checkpoint")
    optim_meta = dict(meta["optimizer"])
    optim_meta["buffers"] = {name[len("optim."):]: t for name, t in adapter.extra_tensors.items()}
    adapter.extra_tensors = {}
    base.attach_adapter(adapter)
    trainer = dict(meta["trainer"])
    base.dropout_step = int(trainer.pop("dropout_step"))
    base.seed = int(trainer.pop("model_seed"))
    return Checkpoint(base, optim_meta, trainer, dict(meta.get("train_config", {})))
