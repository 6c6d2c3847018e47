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
    """Write everything needed to continue training exactly, atomically."""
    from .serialize import save_model
    state = optimizer.state_dict()
    extra = {f"optim.{name}": np.asarray(buf, dtype=np.float32)
             for name, buf in state["buffers"].items()}
    meta = {"kind": CHECKPOINT_KIND,
            "optimizer": {k: v for k, v in state.items() if k != "buffers"},
            "trainer": dict(trainer_state, dropout_step=int(model.dropout_step),
                            model_seed=int(model.seed)),
            "train_config": train_config}
    save_model(model, path, dtype="f32", tokenizer=tokenizer, metadata=meta,
               extra_tensors=extra)


def load_checkpoint(path: str | os.PathLike[str], backend: str = "auto") -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; RunError when it is missing or is a
    plain model file, FormatError (from sllm.serialize) when it is corrupt."""
    from .model import load_model
    from .serialize import read_model_file
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RunError(f"{path}: no checkpoint here")
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
