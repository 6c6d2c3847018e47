"""TrainConfig: every setting of a training run, loadable from a training-config JSON."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import validate
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
    byte_fallback: a new word or char tokenizer writes what it lacks as bytes (no [UNK]);
    init_from: a model file whose weights, config and tokenizer the run starts from (then
    model, tokenizer and vocab_size are not used);
    lora_rank: train a LoRA adapter of this rank on the init_from model, its weights frozen
    (sllm.lora; lora_alpha default 2 * rank, lora_targets default "all", lora_dropout 0);
    lora_tokens: "auto" (default: the byte-fallback tokens of the corpus, which the base's
    vocabulary lacks), "none" or a comma list of token ids whose embedding (and head) rows
    the adapter trains (sllm.lora_tokens);
    max_memory: the memory budget ("8G", "512M"; default: what the machine has available);
    recompute: activation checkpointing (SLLM.recompute: the same steps in less memory, for
    about one more forward per step).
    Every value is checked on construction (ConfigError names the key and its range).
    """

    model: str | dict[str, Any] | None = None
    corpus: str | None = None
    demo_chars: int = 3_000_000
    tokenizer: str = "word"
    vocab_size: int | None = None
    byte_fallback: bool = True
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
    max_memory: str | None = None
    recompute: bool = False
    log_every: int = 10
    out: str = "runs/latest"
    seed: int = 0
    init_from: str | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: str | None = None
    lora_dropout: float | None = None
    lora_tokens: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            setattr(self, name, check(name, getattr(self, name)))
        if self.model is not None and not isinstance(self.model, (str, dict)):
            self.model = validate.check_text("model", self.model)  # a path-like, or an error
        if not isinstance(self.extra, dict):
            raise ConfigError(f"training config: extra must be an object, got {self.extra!r}")
        if self.steps is None and self.epochs is None:
            raise ConfigError("training config: give steps or epochs")
        self.lora_config()  # checks the LoRA settings

    def lora_config(self) -> Any:
        """The run's sllm.lora.LoraConfig, or None for a run that trains every weight."""
        from . import lora_tokens
        from .lora import LoraConfig
        extras = {"lora_alpha": self.lora_alpha, "lora_targets": self.lora_targets,
                  "lora_dropout": self.lora_dropout, "lora_tokens": self.lora_tokens}
        if self.lora_rank is None:
            if given := [k for k, v in extras.items() if v is not None]:
                raise ConfigError(f"{given[0]} needs lora_rank (--lora-rank): it sets up a "
                                  f"LoRA adapter")
            return None
        if self.init_from is None:
            raise ConfigError("lora_rank trains an adapter on a base model: give the base with "
                              "init_from (sllm finetune MODEL, or --init-from MODEL)")
        if self.lora_tokens is not None:
            lora_tokens.parse_option(self.lora_tokens)
        # None means "not given"; an empty --lora-targets "" is a mistake LoraConfig names
        targets = "all" if self.lora_targets is None else self.lora_targets
        return LoraConfig(self.lora_rank, self.lora_alpha, targets,
                          self.lora_dropout or 0.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
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
    def from_json(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a training-config JSON file."""
        return cls.from_dict(_read_json(path))

    @classmethod
    def read_overrides(cls, path: str | os.PathLike[str]) -> dict[str, Any]:
        """The settings a training-config JSON file gives, by field name (for --resume)."""
        data = _read_json(path)
        cls.from_dict({**data, "steps": 1} if data.get("steps") is None else data)  # checks
        return {k.replace("-", "_"): v for k, v in data.items()}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (None values are ignored), checked again."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"training config: unknown setting(s) {unknown}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as JSON atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def _read_json(path: str | os.PathLike[str]) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{os.fspath(path)}: no such training config") from None
    except IsADirectoryError:
        raise ConfigError(f"{os.fspath(path)}: is a directory, not a training config") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{os.fspath(path)}: not valid JSON ({e})") from None


def _int(lo: int, hi: int = validate.INT_MAX, optional: bool = False) -> Callable[[str, Any], Any]:
    return lambda name, v: validate.check_int(name, v, lo, hi, optional)


def _num(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False,
         optional: bool = False) -> Callable[[str, Any], Any]:
    return lambda name, v: validate.check_number(name, v, lo, hi, lo_open, hi_open, optional)


def _choice(*choices: str) -> Callable[[str, Any], Any]:
    return lambda name, v: validate.check_choice(name, v, choices)


def _memory(name: str, value: Any) -> Any:
    from .budget import parse_size
    if value is not None:
        parse_size(value, name)
    return value


# name -> check(name, value) returning the canonical value; messages give the range.
_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "corpus": lambda n, v: validate.check_text(n, v, optional=True),
    "init_from": lambda n, v: validate.check_text(n, v, optional=True),
    "demo_chars": _int(1, 10**9),
    "tokenizer": lambda n, v: validate.check_text(n, v),
    "vocab_size": _int(2, optional=True),
    "byte_fallback": validate.check_bool,
    "encoding_errors": _choice("strict", "replace", "ignore"),
    "documents": validate.check_bool,
    "backend": lambda n, v: validate.check_text(n, v),
    "steps": _int(1, optional=True),
    "epochs": _num(0.0, 1e6, lo_open=True, optional=True),
    "batch_size": _int(1),
    "seq_len": _int(1, optional=True),
    "dropout": _num(0.0, 1.0, hi_open=True, optional=True),
    "optimizer": _choice("adam", "adamw", "sgd"),
    "lr": _num(0.0),
    "min_lr": _num(0.0),
    "betas": lambda n, v: validate.check_betas(v),
    "momentum": _num(0.0, 1.0, hi_open=True),
    "weight_decay": _num(0.0),
    "schedule": _choice("cosine", "linear", "constant"),
    "warmup": _int(0),
    "grad_clip": _num(0.0),
    "val_fraction": _num(0.0, 1.0, hi_open=True),
    "eval_every": _int(0),
    "eval_batches": _int(1),
    "patience": _int(1, optional=True),
    "min_delta": _num(0.0),
    "checkpoint_every": _int(0),
    "max_minutes": _num(0.0, lo_open=True, optional=True),
    "max_memory": _memory,
    "recompute": validate.check_bool,
    "log_every": _int(1),
    "out": lambda n, v: validate.check_text(n, v),
    "seed": _int(0, 2**63 - 1),
}
