"""TrainConfig: every setting of a training run, loadable from a training-config JSON."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .fileio import atomic_write_text


@dataclass
class TrainConfig:
    """A training run's settings (the `sllm train` options; see `sllm train --help`).

    corpus: UTF-8 text file, or None for the built-in demo corpus (demo_chars long);
    epochs, when set, overrides steps; max_minutes: stop (and save) when the time is up;
    tokenizer: "word" | "char" | "bpe" or a path to a vocab.json; model: a model-config
    path or dict (its vocab_size is replaced by the tokenizer's); steps or epochs: run
    length; seq_len: window length T (default: the model's max_seq_len); vocab_size: the
    tokenizer's size (default: 4000 for word and bpe, every character for char);
    init_from: a model file whose weights, config and tokenizer the run starts from (then
    model, tokenizer and vocab_size are not used).
    """

    model: "str | dict[str, Any] | None" = None
    corpus: str | None = None
    demo_chars: int = 3_000_000
    tokenizer: str = "word"
    vocab_size: int | None = None
    encoding_errors: str = "strict"
    documents: bool = False
    backend: str = "auto"
    steps: int | None = 1000
    epochs: float | None = None
    batch_size: int = 16
    seq_len: int | None = None
    dropout: float | None = None
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    momentum: float = 0.9
    weight_decay: float = 0.1
    schedule: str = "cosine"
    warmup: int = 100
    grad_clip: float = 1.0
    val_fraction: float = 0.2
    eval_every: int = 100
    eval_batches: int = 10
    patience: int | None = None
    min_delta: float = 0.0
    checkpoint_every: int = 500
    max_minutes: float | None = None
    log_every: int = 10
    out: str = "runs/latest"
    seed: int = 0
    init_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        checks = {"batch_size": self.batch_size >= 1, "lr": self.lr >= 0,
                  "min_lr": self.min_lr >= 0, "warmup": self.warmup >= 0,
                  "grad_clip": self.grad_clip >= 0, "eval_batches": self.eval_batches >= 1,
                  "eval_every": self.eval_every >= 0, "log_every": self.log_every >= 1,
                  "checkpoint_every": self.checkpoint_every >= 0,
                  "val_fraction": 0.0 <= self.val_fraction < 1.0,
                  "vocab_size": self.vocab_size is None or self.vocab_size >= 2,
                  "steps": self.steps is None or self.steps >= 1,
                  "epochs": self.epochs is None or self.epochs > 0,
                  "seq_len": self.seq_len is None or self.seq_len >= 1,
                  "patience": self.patience is None or self.patience >= 1,
                  "max_minutes": self.max_minutes is None or self.max_minutes > 0,
                  "encoding_errors": self.encoding_errors in ("strict", "replace", "ignore")}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"training config: invalid {key} = {getattr(self, key)!r}")
        if self.steps is None and self.epochs is None:
            raise ConfigError("training config: give steps or epochs")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a dict with snake_case keys (dashes are accepted: "batch-size")."""
        if not isinstance(data, dict):
            raise ConfigError("a training config must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        clean = {k.replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(clean) - names)
        if unknown:
            raise ConfigError(f"training config: unknown key(s) {unknown}; known: {sorted(names)}")
        return cls(**clean)

    @classmethod
    def from_json(cls, path: "str | os.PathLike[str]") -> "TrainConfig":
        """Read a training-config JSON file."""
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except FileNotFoundError:
            raise ConfigError(f"{os.fspath(path)}: no such training config") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{os.fspath(path)}: not valid JSON ({e})") from None

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def save(self, path: "str | os.PathLike[str]") -> None:
        """Write as JSON atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))
