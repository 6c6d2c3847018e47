"""The `sllm` command line (typer): parse, call the library, print. Nothing else lives here."""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._version import __version__
from .errors import ConfigError, ExportError, SLLMError
from .paths import shipped_configs

app = typer.Typer(help="Train and run small GPT-style language models on CPUs.",
                  no_args_is_help=True, add_completion=False)
vocab_app = typer.Typer(help="Build and inspect vocabularies (tokenizers).", no_args_is_help=True)
app.add_typer(vocab_app, name="vocab")
term = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


# --config takes a JSON file or the name of a config shipped with sllm, from any directory.
CONFIG_HELP = f"Model config: a JSON file, or a shipped config by name ({', '.join(shipped_configs())})."
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output (never the input, "
                                                   "never a device).")


def _output(path: Any, *inputs: Any, overwrite: bool, kind: str = "file",
            option: str = "-o") -> None:
    """Refuse an output that would destroy an input or something not ours (sllm.outputs);
    `option` names the output as the user typed it (an option or a positional argument)."""
    from .outputs import check_output
    check_output(path, inputs, overwrite=overwrite, kind=kind, option=option)


def _print_version(value: bool) -> None:
    if value:
        term.print(f"sllm {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print sllm's version and exit.")) -> None:
    """Train and run small GPT-style language models on CPUs."""


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)


def command(fn: Callable) -> Callable:
    """Turn sllm's own errors into a one-line message and exit status 1."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except (SLLMError, ValueError, OSError) as e:
            # escape: a message is text, and rich would take 'sllm[mpi]' for a style tag
            err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(1) from None
        except MemoryError as e:  # a last resort: the memory budget refuses before this
            err.print(f"[red]error:[/] out of memory ({e or 'no detail'}); try a smaller "
                      f"model or batch, or set --max-memory", highlight=False)
            raise typer.Exit(1) from None
        except RuntimeError as e:
            # Python 3.11 wraps a Ctrl-C (or SIGTERM, see jobcontrol) that lands in a class
            # body of a module imported on first use in a RuntimeError ("Error calling
            # __set_name__"): it is still an interrupt, not a traceback (a run being prepared
            # printed one, 1 of ~30 SIGTERMs under load).
            from .plugins import reraise_interrupt
            reraise_interrupt(e)
            raise
    return wrapper


# ---- train ---------------------------------------------------------------------------------
@app.command()
@command
def train(
    config: str | None = typer.Option(None, help=f"{CONFIG_HELP} Its vocabSize follows the tokenizer."),
    corpus: str | None = typer.Option(None, help="UTF-8 text file to train on; default: the built-in demo corpus."),
    tokenizer: str | None = typer.Option(None, help="word | char | bpe, or a vocab.json to reuse. (default: word)"),
    vocab_size: int | None = typer.Option(None, help="Vocabulary size to build (shrunk with a warning if the corpus "
                                                        "has fewer). (default: 4000; char: all characters)"),
    byte_fallback: bool | None = typer.Option(None, "--byte-fallback/--no-byte-fallback",
                                              help="A new word or char vocabulary writes what it lacks as UTF-8 "
                                                   "bytes, never [UNK] (256 more ids). (default: on)"),
    backend: str | None = typer.Option(None, help="Compute backend (see `sllm backends`). (default: auto = "
                                                     "fastest)"),
    steps: int | None = typer.Option(None, help="Optimisation steps. (default: 1000)"),
    epochs: float | None = typer.Option(None, help="Passes over the training tokens (overrides --steps)."),
    batch_size: int | None = typer.Option(None, help="Sequences per step (B). (default: 16)"),
    seq_len: int | None = typer.Option(None, help="Tokens per sequence (T). (default: the model's maxSeqLen)"),
    dropout: float | None = typer.Option(None, help="Override the model config's dropout."),
    lr: float | None = typer.Option(None, help="Peak learning rate. (default: 1e-3)"),
    min_lr: float | None = typer.Option(None, help="Learning rate at the end of the decay. (default: 1e-4)"),
    optimizer: str | None = typer.Option(None, help="adam | adamw | sgd. (default: adamw)"),
    betas: str | None = typer.Option(None, help="Adam betas as 'b1,b2'. (default: 0.9,0.99)"),
    momentum: float | None = typer.Option(None, help="SGD momentum. (default: 0.9)"),
    schedule: str | None = typer.Option(None, help="cosine | linear | constant. (default: cosine)"),
    warmup: int | None = typer.Option(None, help="Linear warmup steps. (default: 100)"),
    weight_decay: float | None = typer.Option(None, help="Weight decay on matrices. (default: 0.1)"),
    grad_clip: float | None = typer.Option(None, help="Clip the global gradient norm (0 = off). (default: 1.0)"),
    val_fraction: float | None = typer.Option(None, help="Share of the corpus held out for validation. (default: "
                                                            "0.2)"),
    eval_every: int | None = typer.Option(None, help="Evaluate every N steps (0 = only at the end). (default: 100)"),
    eval_batches: int | None = typer.Option(None, help="Validation batches per evaluation. (default: 10)"),
    patience: int | None = typer.Option(None, help="Early stopping: evaluations without improvement before "
                                                      "stopping."),
    min_delta: float | None = typer.Option(None, help="Early stopping: the improvement that counts. (default: 0)"),
    checkpoint_every: int | None = typer.Option(None, help="Write checkpoint.sllm every N steps (0 = only at the "
                                                              "end). (default: 500)"),
    log_every: int | None = typer.Option(None, help="Write a metrics.jsonl line every N steps. (default: 10)"),
    max_minutes: float | None = typer.Option(None, help="Stop and save when this much time has passed."),
    documents: bool | None = typer.Option(None, "--documents/--windows", help="One padded document per row instead "
                                                                                 "of random windows."),
    encoding_errors: str | None = typer.Option(None, help="strict (error naming the byte) | replace | ignore, for "
                                                             "non-UTF-8 corpora."),
    demo_chars: int | None = typer.Option(None, help="Size of the built-in demo corpus in characters. (default: "
                                                        "3000000)"),
    out: str | None = typer.Option(None, help="Run directory to write. (default: runs/latest)"),
    resume: str | None = typer.Option(None, help="Continue the run in this directory from its checkpoint."),
    init_from: str | None = typer.Option(None, help="Start from this model's weights, config and tokenizer: a "
                                                       ".sllm file (e.g. one made by `sllm import`) or a run "
                                                       "directory."),
    lora_rank: int | None = typer.Option(None, help="Train a LoRA adapter of this rank on the --init-from model, "
                                                       "its weights frozen; writes adapter.sllm (see `sllm "
                                                       "finetune`)."),
    lora_alpha: float | None = typer.Option(None, help="LoRA scale alpha (the delta is alpha/rank * x A B). (default: "
                                                          "2 x rank)"),
    lora_targets: str | None = typer.Option(None, help="Weights the adapter changes: attn | mlp | all, or a comma "
                                                          "list of weight-name suffixes. (default: all)"),
    lora_dropout: float | None = typer.Option(None, help="Dropout on the adapter's input, 0 <= p < 1. (default: 0)"),
    lora_tokens: str | None = typer.Option(None, help="Tokens whose embedding and output rows the adapter trains: "
                                                         "auto (the corpus's byte-fallback pieces, which the base "
                                                         "never trained) | none | a comma list of token ids. "
                                                         "(default: auto)"),
    seed: int | None = typer.Option(None, help="Seed for weights, batches and dropout. (default: 0)"),
    train_config: str | None = typer.Option(None, help="Training-config JSON with any of these options (flags "
                                                          "override it)."),
    max_memory: str | None = typer.Option(None, help="Memory budget, e.g. 8G or 512M: runs that need more are "
                                                        "refused. (default: the memory available now)"),
    recompute: bool | None = typer.Option(None, "--recompute/--no-recompute", help="Activation checkpointing: keep "
                                                 "one layer's activations, recompute the others in backward (the "
                                                 "same steps, less memory, about a quarter more time)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --out (its files are removed "
                                                              "first)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ranks: str | None = typer.Option(None, help="Data-parallel ranks on this machine: N or 'auto' (runs mpiexec; "
                                                   "needs sllm\\[mpi]). Under mpiexec, leave it out."),
) -> None:
    """Train a model; writes metrics.jsonl, checkpoints and model.sllm to the run directory."""
    from . import distributed, jobcontrol, launch
    from . import train as training
    given = {k: v for k, v in locals().items() if k not in ("train_config", "resume", "quiet",
                                                          "training", "config", "ranks",
                                                          "distributed", "launch", "overwrite",
                                                          "jobcontrol")}
    given["model"] = config
    jobcontrol.interrupt_on_sigterm()  # before training: SIGTERM unwinds like Ctrl-C
    if ranks is not None:
        n = launch.parse_ranks(ranks)
        if n is not None and batch_size is not None and batch_size < n:
            # Refused before mpiexec starts: an error printed by a rank just before MPI Abort
            # can be lost with the job, and this one is known from the command line alone.
            raise distributed.DistributedError(distributed.batch_too_small(batch_size, n))
        plan = functools.partial(launch.plan_for, given, resume, train_config)
        raise typer.Exit(launch.launch_cli(ranks, sys.argv[1:], term, plan))
    if betas is not None:
        given["betas"] = _parse_betas(betas)
    given = {k: v for k, v in given.items() if v is not None}
    # Started by `--ranks`: end when the launcher is gone. Before MPI starts, whose init
    # waits for every rank: one that a signal stopped while starting would leave it waiting.
    jobcontrol.owned_by_launcher()
    group = distributed.world()  # the single process, or this rank of an mpiexec job
    if resume and overwrite:
        raise SLLMError("--overwrite starts a new run; it cannot be combined with --resume")

    def run() -> tuple[Any, Any]:
        jobcontrol.accept_signals()  # a rank has joined its job: a signal now ends it whole
        trainer = None
        if group.is_root and resume:
            from_file = training.TrainConfig.read_overrides(train_config) if train_config else {}
            options = {**from_file, **given}
            trainer = training.resume(resume, progress=not quiet,
                                      backend=options.pop("backend", None), **options)
            term.print(f"resuming {resume} at step {trainer.step} of {trainer.total}")
        elif group.is_root:
            base = (training.TrainConfig.from_json(train_config) if train_config
                    else training.TrainConfig())
            trainer = training.prepare(base.replace(**given), progress=not quiet,
                                       overwrite=overwrite)
            _describe_run(trainer)
        if trainer is not None:  # rank 0, its run.lock held
            try:
                jobcontrol.raise_if_lost()
            except KeyboardInterrupt:
                if trainer.lock is not None:
                    trainer.lock.release()
                raise
        trainer = launch.replicate(trainer, group)
        with jobcontrol.graceful_to_the_end(functools.partial(setattr, trainer,
                                                              "stop_requested", True)):
            return trainer.run(), trainer

    result, trainer = distributed.guarded(group, run)
    if group.is_root:
        _report(result, trainer)


def _parse_betas(text: str) -> tuple[float, float]:
    try:
        b1, b2 = (float(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"--betas must look like 0.9,0.99, got {text!r}") from None
    return b1, b2


def _describe_run(trainer: Any) -> None:
    m, d = trainer.model, trainer.data
    ranks = _ranks_note()
    lora = m.adapter
    rows = len(lora.adapter.token_ids) if lora is not None else 0
    rows_note = f" and the rows of {rows} tokens (--lora-tokens)" if rows else ""
    trains = "" if lora is None else (f" (LoRA rank {lora.adapter.config.rank} on "
                                      f"{len(lora.adapter.targets)} weights{rows_note} trains "
                                      f"{lora.num_parameters():,} of them)")
    term.print(f"model: {m.num_parameters():,} parameters{trains}, backend {m.backend.name}{ranks}; "
              f"tokenizer {trainer.tok.kind} ({trainer.tok.vocab_size} ids); "
              f"{len(d.train.ids):,} train / {len(d.val.ids):,} val tokens; "
              f"{trainer.total} steps of {d.batch_size}x{d.seq_len} -> {trainer.cfg.out}",
              highlight=False)


def _ranks_note() -> str:
    """', N ranks x T threads' under MPI, else nothing."""
    from .distributed import world
    group = world()
    if group.size == 1:
        return ""
    threads = os.environ.get("SLLM_NUM_THREADS", "?")
    return f", {group.size} ranks x {threads} thread{'' if threads == '1' else 's'}"


def _report(result: Any, trainer: Any) -> None:
    val = f", best val loss {result.best_val_loss:.4f}" if result.best_val_loss is not None else ""
    loss = f"train loss {result.train_loss:.4f}" if result.train_loss is not None else ""
    line = f"{result.status}: step {result.step}, {loss}{val}, {result.seconds:.1f}s"
    if result.status == "diverged":
        err.print(f"[red]error:[/] {escape(result.message)}", highlight=False)
        raise typer.Exit(1)
    term.print(line, highlight=False)
    term.print(result.message, highlight=False)


# ---- finetune / merge: LoRA adapters (sllm/lora.py, docs/finetune.md) ----------------------
# finetune is `train --init-from MODEL` with a LoRA adapter by default: its options are train's
# (the same typer parameters, so progress, eval, checkpoints, --resume, early stopping and
# --ranks behave alike), less those that build a new model or tokenizer.
DEFAULT_RANK = 8  # finetune trains an adapter of this rank unless --full or --lora-rank
# An adapter starts at zero and needs ~10x full fine-tuning's rate: on bench/lora.py's quality
# protocol 1e-2 reached the lowest held-out perplexity of 3e-3 / 1e-2 / 3e-2 (train's 1e-3 lags).
DEFAULT_LORA_LR = 1e-2
# train's options that make a new model or vocabulary: a fine-tuning run has its base's.
NOT_FOR_FINETUNE = ("config", "tokenizer", "vocab_size", "byte_fallback", "demo_chars",
                    "init_from")
LORA_OPTIONS = ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout", "lora_tokens")


def finetune(model: str, full: bool, **options: Any) -> None:
    """Fine-tune MODEL (a .sllm file or a run directory) on --corpus. By default trains a LoRA
    adapter (rank 8, alpha 16, all attention and MLP weights; the base frozen; --lr default
    1e-2) and writes --out/adapter.sllm; --full trains every weight (--lr default 1e-3) and
    writes --out/model.sllm."""
    lora = {k: options[k] for k in LORA_OPTIONS}
    if full and any(v is not None for v in lora.values()):
        given = next(k for k, v in lora.items() if v is not None)
        raise SLLMError(f"--full trains every weight; drop --{given.replace('_', '-')}")
    if options["corpus"] is None and options["resume"] is None:
        raise SLLMError("finetune needs --corpus FILE, the text to fine-tune on")
    if not full and lora["lora_rank"] is None:
        options["lora_rank"] = DEFAULT_RANK
    if not full and options["lr"] is None and options["resume"] is None and options["train_config"] is None:
        options["lr"] = DEFAULT_LORA_LR  # a resumed run or a config file keeps its own rate
    train(**{**{name: None for name in NOT_FOR_FINETUNE}, **options, "init_from": model})


def _finetune_signature() -> inspect.Signature:
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


finetune.__signature__ = _finetune_signature()  # type: ignore[attr-defined]
app.command("finetune")(command(finetune))


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


# ---- generate / chat -----------------------------------------------------------------------
def _load(model_path: str, backend: str, tokenizer: str | None,
          adapter: str | None = None) -> tuple[Any, Any]:
    from . import tokenizer as tokenizers
    path = _resolve_model(model_path)
    model = _load_model_only(model_path, backend, adapter)
    if tokenizer:
        tok = tokenizers.load(tokenizer)
    elif model.tokenizer:
        tok = tokenizers.from_dict(model.tokenizer)
    else:
        raise SLLMError(f"{path} has no tokenizer inside; pass --tokenizer vocab.json")
    return model, tok


def _resolve_model(path: str) -> str:
    """A model file, or the best file in a run directory."""
    from .paths import model_file
    return os.fspath(model_file(path))


def _sampling(temperature: float, top_k: int | None, top_p: float | None,
              seed: int | None, **more: Any) -> dict[str, Any]:
    return {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
            **{k: v for k, v in more.items() if v is not None}}


def _logit_bias(items: list[str]) -> dict[int, float] | None:
    """["ID=BIAS", ...] -> {id: bias} (ConfigError naming --logit-bias)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[int(key)] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--logit-bias takes TOKEN_ID=BIAS, got {item!r}")
    return out or None


def _constraint(tok: Any, json_schema: str | None, regex: str | None,
                choice: list[str]) -> Any:
    """The constraint asked for on the command line, or None."""
    if json_schema is None and regex is None and not choice:
        return None
    from . import constrain
    schema = None
    if json_schema is not None:
        try:
            with open(json_schema, encoding="utf-8") as f:
                schema = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--json-schema {json_schema}: {e}") from None
    return constrain.compile_for(tok, json_schema=schema, regex=regex,
                                 choices=choice or None).start()


@app.command()
@command
def generate(
    model: str = typer.Argument(..., help="A .sllm model file or a run directory."),
    prompt: str = typer.Option("", help="Text to continue."),
    max_tokens: int = typer.Option(100, help="Most new tokens to generate."),
    temperature: float = typer.Option(0.8, help="0 = greedy; higher = more random."),
    top_k: int | None = typer.Option(None, help="Sample only from the k likeliest tokens."),
    top_p: float | None = typer.Option(None, help="Sample from the smallest set with this probability."),
    seed: int | None = typer.Option(None, help="Seed for reproducible samples."),
    min_p: float | None = typer.Option(None, help="Drop tokens less likely than this times the likeliest."),
    frequency_penalty: float | None = typer.Option(None, help="Subtract this times a token's count so far (-2..2)."),
    presence_penalty: float | None = typer.Option(None, help="Subtract this from tokens already generated (-2..2)."),
    repetition_penalty: float | None = typer.Option(None, help="Divide logits of tokens already seen (1 = off)."),
    logit_bias: list[str] = typer.Option([], help="TOKEN_ID=BIAS added to that token's logit (repeatable)."),
    json_schema: str | None = typer.Option(None, help="A JSON Schema file: the output is JSON that validates."),
    regex: str | None = typer.Option(None, help="The output matches this regular expression."),
    choice: list[str] = typer.Option([], help="The output is one of these strings (repeatable)."),
    backend: str = typer.Option("auto", help="Compute backend."),
    tokenizer: str | None = typer.Option(None, help="vocab.json, when the model file has none."),
    adapter: str | None = typer.Option(None, help="A LoRA adapter file (e.g. a finetune run's adapter.sllm) to "
                                                     "apply to the model."),
) -> None:
    """Continue a prompt, printing tokens as they are generated (stops at [EOS])."""
    from .generate import check_sampling, encode_prompt, stream_text
    more = {"min_p": min_p, "frequency_penalty": frequency_penalty,
            "presence_penalty": presence_penalty, "repetition_penalty": repetition_penalty,
            "logit_bias": _logit_bias(logit_bias)}
    check_sampling(max_tokens, temperature, top_k, top_p, seed,
                   **{k: v for k, v in more.items() if v is not None})
    m, tok = _load(model, backend, tokenizer, adapter)
    constraint = _constraint(tok, json_schema, regex, choice)
    ids = encode_prompt(tok, prompt)
    term.print(tok.decode(ids), end="", style="bold", highlight=False)
    with warnings.catch_warnings(record=True) as later:  # shown after the text, not inside it
        warnings.simplefilter("default")
        for piece in stream_text(m, tok, ids, max_tokens, constraint=constraint,
                                 **_sampling(temperature, top_k, top_p, seed, **more)):
            term.print(piece, end="", highlight=False, markup=False)
    term.print()
    for w in later:
        _show_warning(w.message, w.category, w.filename, w.lineno)


def _check_overflow(value: str) -> None:
    if value not in ("trim", "error"):
        raise ConfigError(f"--context-overflow must be trim or error, got {value!r}")


@app.command()
@command
def chat(
    model: str = typer.Argument(..., help="A .sllm model file or a run directory."),
    max_tokens: int = typer.Option(48, help="Most tokens per answer."),
    temperature: float = typer.Option(0.7, help="0 = greedy; higher = more random."),
    top_k: int | None = typer.Option(40, help="Sample only from the k likeliest tokens."),
    top_p: float | None = typer.Option(None, help="Nucleus sampling threshold."),
    seed: int | None = typer.Option(None, help="Seed for reproducible answers."),
    context_overflow: str = typer.Option("trim", help="trim: drop the oldest turns that do not fit; error: refuse."),
    backend: str = typer.Option("auto", help="Compute backend."),
    tokenizer: str | None = typer.Option(None, help="vocab.json, when the model file has none."),
    adapter: str | None = typer.Option(None, help="A LoRA adapter file (e.g. a finetune run's adapter.sllm) to "
                                                     "apply to the model."),
) -> None:
    """Talk to a model trained on dialogues (you are A:, the model is B:). Ctrl-D or /quit ends."""
    from .chat import ChatSession, ContextOverflow
    from .generate import check_sampling
    check_sampling(max_tokens, temperature, top_k, top_p, seed)
    _check_overflow(context_overflow)
    m, tok = _load(model, backend, tokenizer, adapter)
    session = ChatSession(m, tok, max_tokens, context_overflow=context_overflow,
                          **_sampling(temperature, top_k, top_p, seed))
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("A: " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            break
        if line.strip() in ("/quit", "/exit"):
            break
        if not line.strip():
            continue
        if not interactive:
            term.print(f"A: {line}", highlight=False, markup=False)
        try:
            pieces = session.reply(line)
        except ContextOverflow as e:
            term.print(f"(not sent: {e})", style="yellow", highlight=False)
            continue
        first = next(pieces, "")  # any [UNK] warning appears before the answer starts
        term.print("B:", end=" ", style="bold")
        for piece in (first.lstrip(), *pieces):
            term.print(piece, end="", highlight=False, markup=False)
        term.print()


@app.command()
@command
def serve(
    model: str = typer.Argument(..., help="A .sllm model file or a run directory."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port (0: any free port)."),
    backend: str = typer.Option("auto", help="Compute backend."),
    max_batch: int = typer.Option(16, help="Sequences decoded together (KV-cache slots)."),
    max_queue: int = typer.Option(64, help="Requests that may wait for a slot; more get 503."),
    threads: int | None = typer.Option(None, help="Kernel threads (default: the backend's)."),
    api_key: str | None = typer.Option(None, envvar="SLLM_API_KEY",
                                          help="Require 'Authorization: Bearer KEY'."),
    tokenizer: str | None = typer.Option(None, help="vocab.json, when the model file has none."),
    context_overflow: str = typer.Option("trim", help="Chats past the context: trim the oldest turns, or error."),
    log_format: str = typer.Option("text", help="Access and startup/shutdown lines on stderr: text or json."),
    request_timeout: float = typer.Option(300.0, help="Seconds a request may take: one still waiting for a "
                                                      "slot then gets 504, one generating ends with "
                                                      "finish_reason 'length'."),
    adapter: list[str] | None = typer.Option(None, help="NAME=PATH: serve the LoRA adapter file PATH as "
                                                        "model NAME beside the base (repeatable; "
                                                        "requests for different adapters share "
                                                        "each batch step)."),
) -> None:
    """Serve the model over the OpenAI HTTP API (completions, chat, embeddings, streaming)."""
    try:
        from . import serve as server
    except ImportError as e:
        raise SLLMError(f"sllm serve needs the serve extra: pip install 'sllm[serve]' ({e})") \
            from None
    from . import validate as V
    from .batching import Engine
    from .serve_ops import LOG_FORMATS, Observer
    _check_overflow(context_overflow)
    V.check_int("port", port, 0, 65535)  # 70000 used to raise OverflowError from bind()
    if not host.strip() or any(c.isspace() for c in host):
        raise ConfigError(f"--host must be an address or host name, got {host!r}")
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"--log-format must be text or json, got {log_format!r}")
    if not 0 < request_timeout <= server.MAX_REQUEST_TIMEOUT_S:  # NaN fails this too
        raise ConfigError(f"--request-timeout must be in (0, {server.MAX_REQUEST_TIMEOUT_S:g}] "
                          f"seconds, got {request_timeout!r}")
    m, tok = _load(model, backend, tokenizer)
    if threads is not None:
        m.backend.set_num_threads(threads)
    model_id = Path(_resolve_model(model)).stem if not os.path.isdir(model) \
        else Path(model).resolve().name
    engine = Engine(m, tok, max_batch=max_batch, max_queue=max_queue,
                    adapters=_adapter_bank(m, model_id, adapter or []))
    sock = server.bind(host, port)
    where = sock.getsockname()
    observer = Observer(model_id, log_format)
    observer.event("started", url=f"http://{where[0]}:{where[1]}/v1", model=model_id,
                   backend=m.backend.name, slots=max_batch, queue=max_queue,
                   context=m.config.max_seq_len,
                   **({"adapters": ",".join(engine.adapters.names())} if adapter else {}))
    server.run(server.build_app(engine, model_id, api_key, context_overflow, observer,
                                request_timeout), sock)


def _adapter_bank(model: Any, model_id: str, specs: list[str]) -> Any:
    """An AdapterBank serving each --adapter NAME=PATH (names and bases checked)."""
    from .lora import Adapter
    from .lora_bank import AdapterBank
    bank = AdapterBank(model)
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq or not path:
            raise ConfigError(f"--adapter takes NAME=PATH (a served name and an adapter "
                              f"file), got {spec!r}")
        bank.add(name, Adapter.load(path), taken=(model_id,))
    return bank


# ---- vocab -------------------------------------------------------------------------------
@vocab_app.command("build")
@command
def vocab_build(
    corpus: str = typer.Argument(..., help="UTF-8 text file."),
    kind: str = typer.Option("word", help="word | char | bpe."),
    size: int = typer.Option(4000, help="Vocabulary size (including the special tokens)."),
    output: Path = typer.Option(Path("vocab.json"), "-o", "--output", help="Where to write it."),
    encoding_errors: str = typer.Option("strict", help="strict | replace | ignore."),
    byte_fallback: bool = typer.Option(True, "--byte-fallback/--no-byte-fallback",
                                       help="Word and char: write what the vocabulary lacks as UTF-8 bytes."),
) -> None:
    """Build a vocabulary from a corpus and write vocab.json."""
    from . import tokenizer as tokenizers
    tok = tokenizers.train(kind, Path(corpus), size, encoding_errors=encoding_errors,
                           byte_fallback=byte_fallback)
    tok.save(output)
    term.print(f"{kind} vocabulary of {tok.vocab_size} tokens written to {output}",
              highlight=False)


@vocab_app.command("encode")
@command
def vocab_encode(vocab: str = typer.Argument(..., help="vocab.json"),
                 text: str = typer.Argument(..., help="Text to encode.")) -> None:
    """Show how a vocabulary splits a text into tokens."""
    from . import tokenizer as tokenizers
    tok = tokenizers.load(vocab)
    ids = tok.encode(text)
    term.print(f"{len(ids)} tokens: {ids}", highlight=False)
    term.print("pieces: " + " | ".join(tok.decode([i]) for i in ids), highlight=False,
              markup=False)
    term.print(f"decoded: {tok.decode(ids)}", highlight=False, markup=False)


# ---- backends / plot / corpus ------------------------------------------------------------
@contextlib.contextmanager
def _env_removed(name: str) -> Iterator[None]:
    """Run a block with environment variable `name` unset, then restore it."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


@app.command()
@command
def backends(reprobe: bool = typer.Option(False, "--reprobe", help="Forget the cached verdicts on "
                                                                "plugin backends and probe them again.")
             ) -> None:
    """List the compute backends, whether each is usable here, and why not."""
    from . import backends as registry
    if reprobe:
        from .backends.isolation import forget
        forget()
        registry.reset()
    env = os.environ.get("SLLM_BACKEND")
    with _env_removed("SLLM_BACKEND"):  # what auto alone picks, constructed
        auto, auto_error = registry.resolve("auto")
    chosen, chosen_error = registry.resolve(env) if env else (auto, auto_error)
    table = Table("name", "available", "capabilities / reason", "kernels left to numpy")
    for entry in registry.info():
        caps = ", ".join(f"{k}={v}" for k, v in (entry.get("capabilities") or {}).items())
        detail = caps if entry["available"] else str(entry.get("reason"))
        if entry.get("note"):
            detail = f"{detail} ({entry['note']})"
        table.add_row(entry["name"], "yes" if entry["available"] else "no", detail,
                      ", ".join(entry.get("reference_kernels") or []) or "none")
    term.print(table)
    term.print(f"auto picks: {auto or 'none'}" + (f" ({auto_error})" if auto_error else ""),
               highlight=False)
    if env:
        term.print(f"SLLM_BACKEND={env}: models use " +
                   (chosen if chosen else f"nothing, {chosen_error}"), highlight=False)


@app.command()
@command
def docs(topic: str | None = typer.Argument(None, help="A page, e.g. plugins; none lists them.")
         ) -> None:
    """Print a page of sllm's documentation (shipped with the package), or list the pages."""
    from . import docs as pages
    if topic is None:
        for name, path in pages.topics().items():
            term.print(f"{name:<20} {path}", highlight=False)
        return
    term.print(pages.read(topic), highlight=False, markup=False)


@app.command("check-backend")
@command
def check_backend(
    name: str = typer.Argument(..., help="The backend to check, e.g. cpp or a plugin's name."),
    kernel: list[str] | None = typer.Option(
        None, "-k", "--kernel", help="Only kernels whose name contains this (repeatable); "
        "'model' and 'generate' select the whole-model checks."),
    perf: bool = typer.Option(False, "--perf", help="Also time each kernel against numpy."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show every check, not only failures."),
) -> None:
    """Check a backend against the numpy reference, kernel by kernel (exit status 1 on any
    failure): every kernel of the contract on awkward shapes, forward and backward, then the
    whole model's logits, loss and gradients, and generation. Writing a backend plugin:
    `sllm docs plugins` (docs/plugins.md)."""
    from .backends import conformance
    report = conformance.run(name, kernel, perf=perf)
    term.print(conformance.render(report, verbose), highlight=False, markup=False)
    if not report.passed:
        raise typer.Exit(1)


@app.command()
@command
def plot(run_dir: str = typer.Argument(..., help="A run directory (with metrics.jsonl)."),
         output: Path = typer.Option(Path("curve.png"), "-o", "--output", help="PNG to write.")
         ) -> None:
    """Draw train/val loss and learning rate against step (needs matplotlib: the plot extra)."""
    from .plot import plot_run
    plot_run(run_dir, output)
    term.print(f"wrote {output}")


@app.command()
@command
def corpus(output: Path = typer.Option(Path("demo-corpus.txt"), "-o", "--output"),
           chars: int = typer.Option(3_000_000, help="Approximate size in characters."),
           seed: int = typer.Option(0, help="Seed of the generator.")) -> None:
    """Write the built-in demo corpus (dialogues and short stories) to a file."""
    from .corpus import write_corpus
    write_corpus(output, chars, seed)
    term.print(f"wrote {output.stat().st_size:,} bytes to {output}")


# ---- model files ---------------------------------------------------------------------------
@app.command()
@command
def info(model: str = typer.Argument(..., help="A .sllm model file, or a run directory.")) -> None:
    """Show a model file's config, parameter count, dtype, sizes and checksum status."""
    from .serialize import describe
    d = describe(_resolve_model(model))
    table = Table("field", "value", show_header=False)
    rows = [("file", d["path"]), ("format version", str(d["version"])),
            ("file size", f"{d['file_size']:,} bytes"), ("dtype", d["dtype"]),
            ("parameters", f"{d['num_parameters']:,}"), ("vocabulary", f"{d['vocab_size']:,}"),
            ("tokenizer", str(d["tokenizer"] or "none")), ("checksums", d["checksums"])]
    rows += [(f"config.{k}", str(v)) for k, v in d["config"].items()]
    rows += [("extra tensors", ", ".join(d["extra_tensors"]))] if d["extra_tensors"] else []
    rows += [(f"metadata.{k}", str(v)) for k, v in d["metadata"].items() if k != "trainer"]
    for row in rows:
        table.add_row(*row)
    term.print(table)
    if any(t["dtype"] in ("q8_0", "q4_0", "q4_1") for t in d["tensors"]):
        _print_tensor_sizes(d["tensors"])


def _print_tensor_sizes(tensors: list[dict[str, Any]]) -> None:
    """Each tensor's stored type and bytes, and what quantization saved against f32."""
    table = Table("tensor", "type", "shape", "bytes", "saved vs f32")
    for t in tensors:
        table.add_row(t["name"], t["dtype"], "x".join(map(str, t["shape"])),
                      f"{t['bytes']:,}", f"{t['saved']:,}")
    stored = sum(t["bytes"] for t in tensors)
    saved = sum(t["saved"] for t in tensors)
    table.add_row("total", "", "", f"{stored:,}",
                  f"{saved:,} ({(stored + saved) / stored:.2f}x smaller)")
    term.print(table)


@app.command()
@command
def quantize(model: str = typer.Argument(..., help="A float .sllm model file, or a run directory."),
             qtype: str = typer.Option(..., "--type", "-t", help="q8_0 | q4_0 | q4_1."),
             output: str = typer.Option(..., "--output", "-o", help="The quantized .sllm to write."),
             keep_embeddings: bool = typer.Option(False, "--keep-embeddings", help="Keep the token embedding wte in "
                                                                                   "float32 (larger file, no embedding "
                                                                                   "rounding)."),
             overwrite: bool = OVERWRITE) -> None:
    """Quantize a model's matmul weights to ggml's q8_0, q4_0 or q4_1 blocks (inference only)."""
    import sllm
    _output(output, model, overwrite=overwrite)
    src = _resolve_model(model)
    m = sllm.load(src, backend="numpy")
    m.quantize(qtype, embeddings=not keep_embeddings)
    m.save(output)
    size_in, size_out = os.path.getsize(src), os.path.getsize(output)
    term.print(f"{src} ({size_in:,} bytes) -> {output} ({qtype}, {size_out:,} bytes, "
               f"{size_in / size_out:.2f}x smaller)")


@app.command("eval")
@command
def eval_(model: str = typer.Argument(..., help="A .sllm model file, or a run directory."),
          corpus: str | None = typer.Option(None, help="UTF-8 text to evaluate on. Default: the held-out split of "
                                                          "the run directory (MODEL's, or --run's)."),
          run: str | None = typer.Option(None, help="Run directory whose held-out split to use (e.g. when MODEL is "
                                                       "a quantized copy)."),
          backend: str = typer.Option("auto", help="Compute backend."),
          batch_size: int = typer.Option(8, help="Windows per forward pass."),
          max_tokens: int | None = typer.Option(None, help="Evaluate only the first N tokens."),
          json_out: str | None = typer.Option(None, "--json", help="Also write the result as JSON to this file."),
          tokenizer: str | None = typer.Option(None, help="vocab.json, when the model has none inside."),
          adapter: str | None = typer.Option(None, help="A LoRA adapter file to apply to the model.")) -> None:
    """Mean loss and perplexity of a model on held-out text (to judge a quantized model)."""
    import json

    from .evaluate import corpus_ids, evaluate, held_out_ids
    from .fileio import atomic_write
    from .tokenizer import unknown_report
    m, tok = _load(model, backend, tokenizer, adapter) if corpus else \
        (_load_model_only(model, backend, adapter), None)
    if corpus:
        ids, source = corpus_ids(corpus, tok), corpus
    else:
        run_dir = run or (model if os.path.isdir(model) else None)
        if run_dir is None:
            raise SLLMError("pass --corpus FILE, or --run DIR for a run directory's held-out split")
        ids, source = held_out_ids(run_dir), f"{run_dir} (held-out split)"
    r = evaluate(m, ids, batch_size=batch_size, max_tokens=max_tokens)
    r.update(model=_resolve_model(model) + (f" + {adapter}" if adapter else ""), corpus=source)
    term.print(f"{r['model']} ({r['dtype']}, {r['backend']}) on {source}: loss {r['loss']:.4f}, "
               f"perplexity {r['ppl']:.3f} over {r['tokens']:,} tokens ({r['seconds']:.1f} s)")
    unknown = unknown_report(tok, ids) if tok is not None else None
    if unknown:  # a perplexity over [UNK]s flatters the model: say how much was unknown
        r["unknown"] = unknown
        err.print(f"[yellow]warning:[/] {unknown}", highlight=False)
    if json_out:
        with atomic_write(json_out) as f:
            f.write(json.dumps(r, indent=2).encode("utf-8"))


def _load_model_only(model_path: str, backend: str, adapter: str | None = None) -> Any:
    """The model (eval mode), with the LoRA adapter file `adapter` attached when given."""
    import sllm
    from sllm.lora import Adapter
    model = sllm.load(_resolve_model(model_path), backend=backend)
    if adapter is not None:
        model.attach_adapter(Adapter.load(adapter, model))
    return model


@app.command()
@command
def convert(source: str = typer.Argument(..., help="Input model: .sllm (binary) or .json."),
            dest: str = typer.Argument(..., help="Output model: .sllm (binary) or .json."),
            dtype: str = typer.Option("f32", help="Binary output precision: f32 or f16."),
            overwrite: bool = OVERWRITE) -> None:
    """Convert a model between the binary format and the roadmap's JSON format."""
    import sllm
    _output(dest, source, overwrite=overwrite, option="DEST")
    model = sllm.load_json(source, backend="numpy") if source.endswith(".json") \
        else sllm.load(_resolve_model(source), backend="numpy")
    if dest.endswith(".json"):
        model.save_json(dest)
    else:
        model.save(dest, dtype=dtype)
    size_in, size_out = os.path.getsize(_resolve_model(source)), os.path.getsize(dest)
    term.print(f"{source} ({size_in:,} bytes) -> {dest} ({size_out:,} bytes, "
               f"{size_in / size_out:.1f}x smaller)" if size_out < size_in else
               f"{source} ({size_in:,} bytes) -> {dest} ({size_out:,} bytes)")


@app.command("export")
@command
def export_cmd(model: str = typer.Argument(..., help="A .sllm model file or a run directory; with --base, a "
                                                     "LoRA adapter file (or a finetune run directory)."),
               to: str = typer.Option(..., "--to", help="Model: hf (a transformers directory) | gguf (llama.cpp). "
                                                        "Adapter: peft (a PEFT directory) | gguf (llama.cpp LoRA)."),
               output: Path = typer.Option(..., "-o", "--output", help="Directory (hf, peft) or .gguf file to write."),
               dtype: str = typer.Option("f32", help="hf: f32 | f16; gguf: f32 | f16 | q8_0 | q4_0; "
                                                     "an adapter: f32 | f16."),
               base: str | None = typer.Option(None, help="Export the LoRA adapter MODEL for this base model "
                                                          "(.sllm or run directory), the one it was trained on."),
               overwrite: bool = OVERWRITE) -> None:
    """Export a model to Hugging Face (GPT2LMHeadModel, safetensors) or GGUF (llama.cpp), or a
    LoRA adapter (--base) to PEFT or llama.cpp's LoRA GGUF."""
    import sllm

    from .export import export_adapter, export_model
    adapter_path = _adapter_file(model)
    if base is not None and not Path(model).exists():
        raise ExportError(f"{model}: no such adapter file or run directory")
    if adapter_path is None and base is not None:
        raise ExportError(f"--base is for exporting a LoRA adapter; {model} is not one (export a "
                          f"model without --base)")
    if adapter_path is not None and base is None:
        raise ExportError(f"{model} is a LoRA adapter: export it with --to peft or --to gguf and "
                          f"--base BASE, the model it was trained on")
    kind = "dir" if to in ("hf", "peft") else "file"
    if adapter_path is None:
        _output(output, model, overwrite=overwrite, kind=kind)
        m = sllm.load(_resolve_model(model), backend="numpy")
        term.print(export_model(m, to, output, dtype), highlight=False)
        return
    from .export_lora import check_adapter_format
    from .lora import Adapter
    check_adapter_format(to)  # before anything is read
    _output(output, model, base, overwrite=overwrite, kind=kind)
    base_path = _resolve_model(base or "")
    base_model = sllm.load(base_path, backend="numpy")
    adapter = Adapter.load(adapter_path, base_model)
    term.print(export_adapter(adapter, to, output, dtype, Path(base or "").stem, base_model),
               highlight=False)


def _adapter_file(source: str) -> Path | None:
    """The LoRA adapter file `source` names (the file, or a LoRA finetune run directory's
    adapter.sllm: one without a model.sllm or best.sllm; its checkpoint.sllm is the
    adapter's), or None when it names a model."""
    from .lora import ADAPTER_FILE, KIND
    from .paths import RUN_MODELS
    from .serialize import read_metadata
    path = Path(source)
    if path.is_dir():
        has_model = any((path / name).is_file() for name in RUN_MODELS[:2])
        return path / ADAPTER_FILE if (path / ADAPTER_FILE).is_file() and not has_model else None
    if not path.is_file():
        return None  # the model loader says what is missing
    return path if read_metadata(path).get("kind") == KIND else None


@app.command("import")
@command
def import_cmd(source: str = typer.Argument(..., help="A Hugging Face directory (config.json + "
                                                      "model.safetensors), a .gguf file or a "
                                                      "llama2.c model .bin."),
               output: Path = typer.Option(..., "-o", "--output", help="The .sllm file to write."),
               dtype: str = typer.Option("f32", help="Precision of the .sllm file: f32 | f16."),
               overwrite: bool = OVERWRITE) -> None:
    """Import a GPT-2 or llama checkpoint as an sllm model (fine-tune it with train --init-from)."""
    from .export import import_model
    _output(output, source, overwrite=overwrite)
    m = import_model(source)
    m.save(output, dtype=dtype)
    tok = (m.tokenizer or {}).get("type", "none")
    note = m.metadata.get("tokenizer_note")
    term.print(f"wrote {output}: {m.num_parameters():,} parameters, tokenizer {tok}"
               + (f" ({note})" if note else ""), highlight=False)


@app.command("export-web")
@command
def export_web(
    model: str = typer.Argument(..., help="A .sllm model file or a run directory."),
    out: Path = typer.Option(..., "-o", "--out", help="Directory to write the site into."),
    dtype: str | None = typer.Option(None, help="Re-save the model: f32, f16, or q8_0/q4_0/q4_1 "
                                        "(quantized matmul weights, the rest f16)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Write a static site that chats with, and fine-tunes, the model in the browser."""
    from .export_web import export_site
    _output(out, model, overwrite=overwrite, kind="dir")
    site = export_site(model, out, dtype=dtype)
    for name, size in site["files"].items():
        term.print(f"  {name:<20} {size:>10,} bytes", highlight=False)
    term.print(f"wrote {len(site['files'])} files ({site['total_bytes']:,} bytes) to {out}; "
               f"serve it with: python -m http.server -d {out}", highlight=False)


# ---- bench ---------------------------------------------------------------------------------
@app.command()
@command
def bench(
    backends: str = typer.Option("all", help="'all' or a comma list, e.g. numpy,cpp,wasm-simd."),
    suite: str = typer.Option("all", help="kernels | train | generate | all."),
    config: str = typer.Option("small-model", help=f"{CONFIG_HELP} Its shapes drive the GEMMs."),
    batch_size: int = typer.Option(16, help="Sequences per step (B)."),
    seq_len: int = typer.Option(128, help="Tokens per sequence (T)."),
    threads: int | None = typer.Option(None, help="Threads for the backends (default: all cores)."),
    repeats: int = typer.Option(5, help="Timed repetitions per benchmark (median reported)."),
    vs: str | None = typer.Option(None, help="'torch': also time bench/torch_ref.py (PyTorch)."),
    json_out: str | None = typer.Option(None, "--json", help="Write the results to this JSON file."),
    wide: bool = typer.Option(False, "--wide", help="Every column (spread, GFLOP/s, full rates): "
                                                    "about 150 columns."),
) -> None:
    """Compare the backends side by side: kernels (GFLOP/s), a training step (tokens/s),
    generation with the KV cache (tokens/s), each with its ratio to numpy and MFU."""
    from . import backends as registry
    from . import validate
    from .bench import SUITES
    from .bench_report import render, run_bench, write_json
    from .config import ModelConfig
    names = [r["name"] for r in registry.info()] if backends == "all" else \
        [n.strip() for n in backends.split(",") if n.strip()]
    suites = list(SUITES) if suite == "all" else [s.strip() for s in suite.split(",")]
    unknown = [s for s in suites if s not in SUITES]
    if unknown or (vs not in (None, "torch")):
        raise SLLMError(f"unknown suite {unknown} or --vs {vs!r}: suites are {', '.join(SUITES)}; "
                        f"--vs takes 'torch'")
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len),
                        ("repeats", repeats)):
        validate.check_int(name, value, 1)
    validate.check_int("threads", threads, 1, optional=True)
    cfg = ModelConfig.from_json(config).to_dict()
    report = run_bench(names, suites, cfg, batch_size, seq_len, threads, repeats,
                       vs == "torch", console=err)
    # The narrow tables fit 100 columns; --wide needs about 150, whatever the terminal says.
    width = max(term.width, 150) if wide else min(term.width, 100) if term.is_terminal else 100
    render(report, Console(soft_wrap=True, width=width), wide=wide)
    if json_out:
        write_json(report, json_out)
        term.print(f"results written to {json_out}")
    failed = [r["backend"] for r in report["results"] if "error" in r
              and (backends != "all" or not r["error"].startswith("unavailable"))]
    if failed:  # with --backends all, a backend this machine lacks is not a failure
        raise SLLMError(f"benchmark failed for {', '.join(failed)} (see above)")


if __name__ == "__main__":  # `python -m sllm.cli`, as mpiexec runs each rank
    app()
