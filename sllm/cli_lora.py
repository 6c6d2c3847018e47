"""`sllm finetune` and `sllm merge`: the LoRA commands (sllm/lora.py), registered on the app
(sllm/cli_base.py; sllm/cli.py calls register() with its train command).

finetune is `sllm train --init-from MODEL` with a LoRA adapter by default: its options are
train's (the same typer parameters, so progress, eval, checkpoints, --resume, early
stopping and --ranks behave alike), less those that build a new model or tokenizer.
"""
from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import typer

from .cli_base import OVERWRITE, _output, _resolve_model, app, command, term
from .errors import SLLMError

DEFAULT_RANK = 8
# train's options that make a new model or vocabulary: a fine-tuning run has its base's.
NOT_FOR_FINETUNE = ("config", "tokenizer", "vocab_size", "byte_fallback", "demo_chars",
                    "init_from")
LORA_OPTIONS = ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout")


def finetune(train: Callable[..., None], model: str, full: bool, **options: Any) -> None:
    """Fine-tune MODEL (a .sllm file or a run directory) on --corpus. By default trains a LoRA
    adapter (rank 8, alpha 16, all attention and MLP weights; the base frozen) and writes
    --out/adapter.sllm; --full trains every weight and writes --out/model.sllm."""
    lora = {k: options[k] for k in LORA_OPTIONS}
    if full and any(v is not None for v in lora.values()):
        given = next(k for k, v in lora.items() if v is not None)
        raise SLLMError(f"--full trains every weight; drop --{given.replace('_', '-')}")
    if options["corpus"] is None and options["resume"] is None:
        raise SLLMError("finetune needs --corpus FILE, the text to fine-tune on")
    if not full and lora["lora_rank"] is None:
        options["lora_rank"] = DEFAULT_RANK
    train(**{**{name: None for name in NOT_FOR_FINETUNE}, **options, "init_from": model})


def _signature(train: Callable[..., None]) -> inspect.Signature:
    """finetune's parameters for typer: MODEL and --full, then train's options."""
    own = [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str,
                             default=typer.Argument(..., help="The base: a .sllm model file or "
                                                              "a run directory.")),
           inspect.Parameter("full", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=bool,
                             default=typer.Option(False, "--full", help="Train every weight "
                                                  "(full fine-tuning) instead of an adapter."))]
    hints = typing.get_type_hints(train)  # the annotations are strings (future import)
    rest = [p.replace(annotation=hints[name]) for name, p in
            inspect.signature(train).parameters.items() if name not in NOT_FOR_FINETUNE]
    return inspect.Signature(own + rest, return_annotation=None)


def register(train: Callable[..., None]) -> None:
    """Add `sllm finetune` to the app: finetune with train's options, run through train."""
    def finetune_command(model: str, full: bool, **options: Any) -> None:
        finetune(train, model, full, **options)
    finetune_command.__doc__ = finetune.__doc__
    finetune_command.__signature__ = _signature(train)  # type: ignore[attr-defined]
    app.command("finetune")(command(finetune_command))


@app.command()
@command
def merge(base: str = typer.Argument(..., help="The base model: a float .sllm file or a run directory."),
          adapter: str = typer.Argument(..., help="A LoRA adapter file made for that base."),
          output: str = typer.Option(..., "--output", "-o", help="The merged .sllm model to write."),
          overwrite: bool = OVERWRITE) -> None:
    """Fold a LoRA adapter into its base's weights (W += alpha/rank * A @ B): a plain model
    that runs anywhere a model does, with the adapter's outputs."""
    import sllm
    from sllm.lora import Adapter
    from sllm.lora import merge as merge_adapter
    _output(output, base, adapter, overwrite=overwrite)
    src = _resolve_model(base)
    model = sllm.load(src, backend="numpy", mmap=False)
    lora = Adapter.load(adapter, model)
    merge_adapter(model, lora)
    model.metadata = {**model.metadata, "merged_adapter": {
        "rank": lora.config.rank, "alpha": lora.config.alpha, "targets": len(lora.targets)}}
    model.save(output)
    term.print(f"{src} + {adapter} (rank {lora.config.rank}, {len(lora.targets)} weights) -> "
               f"{output}", highlight=False)
