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
# A LoRA fine-tuning run's results (sllm finetune): adapters for its base, not models.
RUN_ADAPTERS = ("adapter.sllm", "best_adapter.sllm")


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
        if not any((path / name).is_file() for name in RUN_MODELS[:2]):
            _refuse_lora_run(path)
        for name in RUN_MODELS:
            if (path / name).is_file():
                return path / name
        raise SLLMError(f"{path}: no {', '.join(RUN_MODELS[:-1])} or {RUN_MODELS[-1]} in this "
                        f"directory")
    if not path.exists():
        raise SLLMError(f"{path}: no such model file or run directory")
    return path


def _refuse_lora_run(path: Path) -> None:
    """A LoRA run directory holds an adapter (and an adapter checkpoint), not a model: say
    how to use it instead of failing on its checkpoint."""
    adapter = next((path / n for n in RUN_ADAPTERS if (path / n).is_file()), None)
    if adapter is None:
        return
    base = _run_base(path)
    raise SLLMError(f"{path} is a LoRA fine-tuning run: it holds the adapter {adapter}, not a "
                    f"model; pass its base with --adapter {adapter} (e.g. sllm generate "
                    f"{base} --adapter {adapter}), or make one model with sllm merge {base} "
                    f"{adapter} -o merged.sllm")


def _run_base(path: Path) -> str:
    """The base model a run started from (train_config.json's init_from), or BASE."""
    import json
    try:
        doc = json.loads((path / "train_config.json").read_text(encoding="utf-8"))
        base = doc.get("init_from") if isinstance(doc, dict) else None
    except (OSError, ValueError):
        base = None
    return base if isinstance(base, str) and base else "BASE"
