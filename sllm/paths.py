"""Arguments that name files, resolved the same way by every command: a model (a .sllm
file, or a run directory holding one) and a model config (a JSON file, or the name of a
config shipped with sllm in sllm/configs/, usable from any directory)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError, SLLMError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# A run directory's model files, best first: the final model, the best by validation loss,
# the last checkpoint.
RUN_MODELS = ("model.sllm", "best.sllm", "checkpoint.sllm")


def shipped_configs() -> dict[str, Path]:
    """The configs that ship with sllm, by name ("small-model": .../configs/small-model.json)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.json"))}


def config_file(source: str | os.PathLike[str]) -> Path:
    """A config argument as a file: an existing path as given, else a shipped config named
    without a directory ("small-model" or "small-model.json"); ConfigError lists the names."""
    path = Path(source)
    if path.exists() or path.parent != Path("."):
        return path
    shipped = shipped_configs()
    name = path.name[:-len(".json")] if path.name.endswith(".json") else path.name
    if name in shipped:
        return shipped[name]
    raise ConfigError(f"config file not found: {source} (shipped configs, usable by name: "
                      f"{', '.join(shipped)})")


def model_file(source: str | os.PathLike[str]) -> Path:
    """A model argument as a file: a .sllm file, or the best model file of a run directory
    (model.sllm, then best.sllm, then checkpoint.sllm)."""
    path = Path(source)
    if path.is_dir():
        for name in RUN_MODELS:
            if (path / name).is_file():
                return path / name
        raise SLLMError(f"{path}: no {', '.join(RUN_MODELS[:-1])} or {RUN_MODELS[-1]} in this "
                        f"directory")
    if not path.exists():
        raise SLLMError(f"{path}: no such model file or run directory")
    return path
