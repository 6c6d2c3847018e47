"""The training loop: schedule, clipping, evaluation, early stopping, checkpoints, resume.

A run directory holds train_config.json, vocab.json, data/ (the token ids, memory-mapped),
metrics.jsonl (one JSON object per logged step), checkpoint.sllm (model + optimizer +
trainer state, rewritten atomically every checkpoint_every steps and at the end),
best.sllm (the weights with the lowest validation loss) and model.sllm (the final weights).
`resume(run_dir)` continues so that the losses equal those of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import backends, budget, lora_tokens
from . import tokenizer as tokenizers
from .checkpoint import RunError, checkpoint_config, load_checkpoint, save_checkpoint
from .config import ModelConfig, resolve_config
from .data import TokenData
from .distributed import Group
from .errors import ConfigError, FormatError, SLLMError
from .fileio import atomic_write_text
from .lora import ADAPTER_FILE, Adapter, frozen_base
from .model import SLLM
from .optim import OPTIMIZERS, Optimizer
from .outputs import check_output
from .paths import model_file
from .progress import TrainProgress
from .runlock import RunLock, acquire
from .schedule import SCHEDULES, Constant, Schedule
from .threads import blas_limited
from .train_config import TrainConfig

__all__ = ["TrainConfig", "Trainer", "TrainResult", "RunError", "prepare", "resume", "train"]

# Settings that shaped the data or the model; a resumed run keeps them.
_FIXED_ON_RESUME = {"model", "corpus", "demo_chars", "tokenizer", "vocab_size", "encoding_errors",
                    "documents", "seq_len", "dropout", "optimizer", "val_fraction", "out",
                    "init_from", "lora_rank", "lora_alpha", "lora_targets", "lora_dropout",
                    "lora_tokens"}
DEFAULT_VOCAB = 4000
CHECKPOINT, BEST, FINAL, METRICS = "checkpoint.sllm", "best.sllm", "model.sllm", "metrics.jsonl"
# A LoRA run writes its adapter instead of the model (the base stays where it was).
LORA_NAMES = {FINAL: ADAPTER_FILE, BEST: "best_adapter.sllm"}
# What a run writes into its directory; --overwrite removes exactly these.
RUN_FILES = (CHECKPOINT, BEST, FINAL, *LORA_NAMES.values(), METRICS, "train_config.json",
             "vocab.json", "data")


@dataclass
class TrainResult:
    """How a run ended: "done", "early_stopped", "time_up", "interrupted" or "diverged"."""

    status: str
    step: int
    train_loss: float | None
    best_val_loss: float | None
    message: str
    seconds: float


# ---- setting a run up -------------------------------------------------------------------
def _tokenizer_for(cfg: TrainConfig, text: str) -> tokenizers.Tokenizer:
    if cfg.tokenizer in tokenizers.TRAINABLE:
        size = cfg.vocab_size or (None if cfg.tokenizer == "char" else DEFAULT_VOCAB)
        return tokenizers.train(cfg.tokenizer, text, size, byte_fallback=cfg.byte_fallback)
    return tokenizers.load(cfg.tokenizer)


def _model_config(cfg: TrainConfig, vocab_size: int, warn: bool = True) -> ModelConfig:
    base = resolve_config(cfg.model) if cfg.model is not None else ModelConfig()
    if warn and cfg.model is not None and base.vocab_size != vocab_size:
        warnings.warn(f"the model config says vocab_size {base.vocab_size}; using the "
                      f"tokenizer's {vocab_size}", stacklevel=4)
    changes: dict[str, Any] = {"vocab_size": vocab_size}
    if cfg.dropout is not None:
        changes["dropout"] = cfg.dropout
    if cfg.seq_len is not None and cfg.seq_len > base.max_seq_len:
        raise ConfigError(f"seq_len {cfg.seq_len} is longer than the model's max_seq_len "
                          f"{base.max_seq_len}")
    return dataclasses.replace(base, **changes)


def check_memory(cfg: TrainConfig, mcfg: ModelConfig, corpus_bytes: int = 0,
                 base: SLLM | None = None) -> None:
    """Refuse (budget.BudgetError) a run whose model, optimizer state and activations
    cannot fit in the memory budget (cfg.max_memory, when set, is the budget: prepare,
    resume and run apply it with budget.limited). base: the loaded model a LoRA run
    freezes, counted as it stores its weights, with the adapter's tensors, gradients and
    optimizer state in place of the base's."""
    lora = cfg.lora_config() if base is not None else None
    budget.check_train(mcfg, cfg.batch_size, cfg.seq_len or mcfg.max_seq_len,
                       backends.get(cfg.backend), cfg.optimizer, corpus_bytes,
                       cfg.eval_batches if cfg.val_fraction > 0 else 0, cfg.recompute,
                       frozen_base(base, lora) if base is not None and lora else None)


def _corpus_bytes(cfg: TrainConfig) -> int:
    if cfg.corpus is None:
        return cfg.demo_chars
    return os.path.getsize(cfg.corpus) if os.path.isfile(cfg.corpus) else 0


def _init_from(cfg: TrainConfig) -> tuple[SLLM, tokenizers.Tokenizer]:
    """The model (weights, config, tokenizer) a fine-tuning run starts from."""
    from .model import load_model
    assert cfg.init_from is not None  # _prepare calls this only for --init-from
    if cfg.model is not None:
        raise ConfigError("--init-from brings its own model config; drop --config")
    try:
        source = model_file(cfg.init_from)  # a model file or a run directory
    except SLLMError as e:
        raise RunError(f"--init-from {e}") from None
    model = load_model(source, backend=cfg.backend, mmap=False)
    if not model.tokenizer:
        raise RunError(f"--init-from {cfg.init_from}: the model has no tokenizer inside, "
                       f"so its token ids mean nothing to this corpus")
    if cfg.dropout is not None:
        model.config = model.config.replace(dropout=cfg.dropout)
    if cfg.seq_len is not None and cfg.seq_len > model.config.max_seq_len:
        raise ConfigError(f"seq_len {cfg.seq_len} is longer than the model's max_seq_len "
                          f"{model.config.max_seq_len}")
    model.seed, model.metadata = cfg.seed, {"init_from": os.fspath(cfg.init_from)}
    return model.train(), tokenizers.from_dict(model.tokenizer)


def attach_lora(cfg: TrainConfig, model: SLLM, check: bool = True) -> None:
    """Attach a fresh adapter made from cfg's LoRA settings, when it has them (check=False:
    a data-parallel rank whose base weights arrive from rank 0 after this); its token rows
    are cfg.lora_tokens's ids (resolved from "auto" by _token_rows before)."""
    lora = cfg.lora_config()
    if lora is None:
        return
    option = lora_tokens.parse_option(cfg.lora_tokens or "none")
    ids = option if isinstance(option, list) else []
    adapter = Adapter.create(model, lora, cfg.seed, token_ids=ids)
    adapter.base["name"] = os.path.basename(os.fspath(cfg.init_from or ""))
    model.attach_adapter(adapter, check=check)


def _token_rows(cfg: TrainConfig, model: SLLM, tok: tokenizers.Tokenizer,
                text: str) -> TrainConfig:
    """cfg with lora_tokens resolved to the ids an adapter trains rows for ("none" when
    there are none), recorded so that a resumed run and every rank make the same adapter.
    "auto" (the default) picks the corpus's byte-fallback pieces; on a quantized embedding
    (whose rows an adapter cannot hold) it picks none and says so."""
    option = lora_tokens.parse_option(cfg.lora_tokens or "auto")
    if cfg.lora_config() is None:
        return cfg
    if option == "auto":
        option = lora_tokens.fallback_ids(tok, tok.encode_array(text))
        if option and model.quantized_weights().keys() & set(lora_tokens.row_owners(model.config)):
            warnings.warn(f"--lora-tokens auto: {len(option)} byte-fallback tokens of the corpus "
                          f"keep the base's untrained rows: this base's embedding is quantized "
                          f"(fine-tune the float32 base to train them)", stacklevel=2)
            option = []
    ids = lora_tokens.check_ids(option if isinstance(option, list) else [],
                                model.config.vocab_size)
    return cfg.replace(lora_tokens=",".join(map(str, ids)) or "none")


def _corpus_text(cfg: TrainConfig) -> str:
    if cfg.corpus is None:
        from .corpus import generate_corpus
        return generate_corpus(cfg.demo_chars, cfg.seed)
    if not os.path.isfile(cfg.corpus):
        raise RunError(f"{cfg.corpus}: no such corpus file")
    return tokenizers.read_text(os.fspath(cfg.corpus), cfg.encoding_errors)


def make_optimizer(cfg: TrainConfig, model: SLLM) -> Optimizer:
    """The optimizer named by cfg.optimizer with cfg's hyper-parameters, over what the model
    trains (model.trainable(): the attached adapter in a LoRA run)."""
    target = model.trainable()
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.optimizer == "sgd":
        return OPTIMIZERS["sgd"](target, cfg.lr, momentum=cfg.momentum,
                                 weight_decay=cfg.weight_decay)
    return OPTIMIZERS[cfg.optimizer](target, cfg.lr, betas=cfg.betas,
                                     weight_decay=cfg.weight_decay)


def make_schedule(cfg: TrainConfig, total_steps: int) -> Schedule:
    """The learning-rate schedule named by cfg.schedule, over total_steps."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {sorted(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.schedule == "constant":
        return Constant(cfg.lr)
    return SCHEDULES[cfg.schedule](cfg.lr, cfg.warmup, total_steps, cfg.min_lr)


def total_steps(cfg: TrainConfig, data: TokenData) -> int:
    """The steps that cover cfg.epochs passes over the training tokens, else cfg.steps."""
    if cfg.epochs is None:
        assert cfg.steps is not None  # TrainConfig refuses a config with neither
        return int(cfg.steps)
    per_epoch = len(data.train.ids) / data.tokens_per_batch
    return max(1, math.ceil(float(cfg.epochs) * per_epoch))


def prepare(cfg: TrainConfig, progress: bool = True, overwrite: bool = False) -> Trainer:
    """A new run in cfg.out: tokenizer, data, model and optimizer, ready to run().

    The run directory is locked for this process first (RunLockedError if another process
    writes it); a directory that already holds a run is refused unless overwrite=True,
    which removes that run's files (and only those) first."""
    check_output(cfg.out, [cfg.init_from], overwrite=overwrite, kind="run", option="--out")
    created = not os.path.exists(cfg.out)
    lock = acquire(cfg.out)
    try:
        _claim_run_dir(cfg.out, overwrite)
        with budget.limited(cfg.max_memory):
            return _prepare(cfg, progress, lock)
    except BaseException:
        lock.release()
        if created:  # a refused run leaves no empty directory behind
            with contextlib.suppress(OSError):
                os.rmdir(cfg.out)
        raise


def _claim_run_dir(out: str, overwrite: bool) -> None:
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]
    if found and not overwrite:
        raise RunError(f"{out} already holds a run ({', '.join(found)}); continue it with "
                       f"--resume {out}, replace it with --overwrite, or choose another --out")
    for name in found:
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


def _prepare(cfg: TrainConfig, progress: bool, lock: RunLock) -> Trainer:
    out = cfg.out
    if not cfg.init_from:  # a first bound before the corpus is read: the vocabulary at its
        smallest = len(tokenizers.SPECIALS)  # smallest, as its size is known after tokenizing
        check_memory(cfg, _model_config(cfg, smallest, warn=False), _corpus_bytes(cfg))
    text = _corpus_text(cfg)
    if cfg.init_from:
        model, tok = _init_from(cfg)
        check_memory(cfg, model.config, base=model)
        cfg = _token_rows(cfg, model, tok, text)
        attach_lora(cfg, model)
        if model.qtype and model.adapter is None:
            raise RunError(f"--init-from {cfg.init_from} is quantized ({model.qtype}): only a "
                           f"LoRA adapter trains on it (--lora-rank); full fine-tuning needs "
                           f"the float32 model")
    else:
        tok = _tokenizer_for(cfg, text)
        mcfg = _model_config(cfg, tok.vocab_size)
        check_memory(cfg, mcfg)
        model = SLLM(mcfg, backend=cfg.backend, seed=cfg.seed)
    seq_len = cfg.seq_len or model.config.max_seq_len
    data = TokenData.from_text(text, tok, seq_len, cfg.batch_size, cfg.val_fraction,
                               cfg.seed, cfg.documents)
    if cfg.init_from:  # an old model without byte fallback reads new words as [UNK]
        unknown = tokenizers.unknown_report(tok, np.concatenate([data.train.ids, data.val.ids]))
        if unknown:
            warnings.warn(f"--init-from {cfg.init_from}: {unknown}", stacklevel=2)
    os.makedirs(out, exist_ok=True)
    data.save(os.path.join(out, "data"))
    tok.save(os.path.join(out, "vocab.json"))
    cfg.save(os.path.join(out, "train_config.json"))
    trainer = Trainer(model, tok, data, cfg, make_optimizer(cfg, model), progress=progress)
    trainer.lock = lock
    return trainer


def resume(run_dir: str | os.PathLike[str], progress: bool = True, backend: str | None = None,
           **overrides: Any) -> Trainer:
    """Continue the run in run_dir from its checkpoint (locking the directory first).

    overrides (steps=..., lr=..., any TrainConfig field except those in _FIXED_ON_RESUME)
    change the saved plan and are recorded in train_config.json at once, so a later
    resume without them continues the same plan."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise RunError(f"--resume {run_dir}: no such run directory")
    lock = acquire(run_dir)
    try:
        trainer = _resume(run_dir, progress, backend, overrides)
    except BaseException:
        lock.release()
        raise
    trainer.lock = lock
    return trainer


def _resume(run_dir: str, progress: bool, backend: str | None,
            overrides: dict[str, Any]) -> Trainer:
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.isfile(path):
        raise RunError(f"--resume {run_dir}: no {CHECKPOINT} in it, so there is nothing to "
                       f"resume; start a new run with --out")
    try:
        cfg = TrainConfig.from_json(os.path.join(run_dir, "train_config.json"))
        config = checkpoint_config(path)
    except (ConfigError, FormatError) as e:
        raise RunError(f"--resume {run_dir}: the run directory is corrupt: {e}") from None
    fixed = sorted(k for k, v in overrides.items() if k in _FIXED_ON_RESUME and v is not None
                   and v != getattr(cfg, k))
    if fixed:
        raise RunError(f"--resume {run_dir}: {', '.join(fixed)} cannot change when resuming "
                       f"(the data and model are fixed); start a new run instead")
    cfg = cfg.replace(**{**overrides, "out": run_dir, "backend": backend})
    with budget.limited(cfg.max_memory):
        base = _init_from(cfg)[0] if cfg.lora_config() else None  # a LoRA run's frozen base
        check_memory(cfg, config, base=base)
        try:
            ckpt = load_checkpoint(path, backend=cfg.backend, base=base)
        except FormatError as e:
            raise RunError(f"--resume {run_dir}: the run directory is corrupt: {e}") from None
    tok = tokenizers.from_dict(ckpt.model.tokenizer)
    data = TokenData.load(os.path.join(run_dir, "data"), cfg.seq_len or
                          ckpt.model.config.max_seq_len, cfg.batch_size, cfg.seed, cfg.documents)
    opt = make_optimizer(cfg, ckpt.model)
    opt.load_state_dict(ckpt.optimizer_state)
    trainer = Trainer(ckpt.model, tok, data, cfg, opt, progress=progress)
    trainer.load_state(ckpt.trainer_state)
    if {"steps", "epochs"} & set(overrides) and trainer.step >= trainer.total:  # else: exit 0
        raise RunError(f"--resume {run_dir}: the checkpoint is at step {trainer.step}, so "
                       f"--steps {trainer.total} leaves nothing to do; ask for more steps")
    cfg.save(os.path.join(run_dir, "train_config.json"))  # the plan now includes overrides
    return trainer


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """prepare(cfg).run()."""
    return prepare(cfg, progress).run()


# ---- the loop ---------------------------------------------------------------------------
class Trainer:
    """Runs the optimisation steps of one run and writes its directory."""

    def __init__(self, model: SLLM, tok: tokenizers.Tokenizer, data: TokenData,
                 cfg: TrainConfig, optimizer: Optimizer, progress: bool = True):
        self.model, self.tok, self.data, self.cfg, self.opt = model, tok, data, cfg, optimizer
        self.total = total_steps(cfg, data)
        self.schedule = make_schedule(cfg, self.total)
        self.step = 0
        self.best_val: float | None = None
        self.bad_evals = 0
        self.last_loss: float | None = None
        self.saved_step: int | None = None  # step of the checkpoint on disk
        self.show_progress = progress
        self.stop_requested = False
        self._window = [0, 0.0]  # steps and compute seconds since the last metrics line
        self._deadline: float | None = None
        self.on_step: Callable[[Trainer], None] | None = None  # test and example hook
        self.lock: RunLock | None = None  # this process's lock on cfg.out (see runlock)
        self.dist = Group()  # the ranks of a data-parallel job (sllm.launch.replicate)

    # ---- state for checkpoints ------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The trainer's counters (the model and optimizer save their own state)."""
        return {"step": self.step, "best_val": self.best_val, "bad_evals": self.bad_evals,
                "last_loss": self.last_loss}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what state() returned."""
        self.step = int(state["step"])
        self.best_val = state.get("best_val")
        self.bad_evals = int(state.get("bad_evals", 0))
        self.last_loss = state.get("last_loss")
        self.saved_step = self.step

    def _path(self, name: str) -> str:
        return os.path.join(self.cfg.out, name)

    def save_checkpoint(self) -> None:
        """Write checkpoint.sllm, then train_config.json, each atomically (rank 0 only under
        MPI; the checkpoint also embeds the config it was trained under)."""
        if self.dist.is_root:
            save_checkpoint(self._path(CHECKPOINT), self.model, self.opt, self.tok.to_dict(),
                            self.state(), self.cfg.to_dict())
            self.cfg.save(self._path("train_config.json"))
        self.saved_step = self.step

    def _save_model(self, name: str) -> None:
        if not self.dist.is_root:
            return
        if self.model.adapter is not None:  # a LoRA run: the adapter, never the base
            self.model.adapter.adapter.save(self._path(LORA_NAMES[name]), overwrite=True,
                                            metadata={"step": self.step,
                                                      "best_val_loss": self.best_val},
                                            dtype="f16")  # the checkpoint keeps f32
            return
        self.model.save(self._path(name), tokenizer=self.tok.to_dict(),
                        metadata={"kind": "model", "step": self.step,
                                  "best_val_loss": self.best_val})

    # ---- running ----------------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train until the total step count (or stop_at, or early stopping, or Ctrl-C).

        Holds the run directory's lock while running and releases it at the end (a later
        run() of the same trainer takes it again)."""
        if self.dist.is_root and (self.lock is None or not self.lock.held):
            self.lock = acquire(self.cfg.out)  # under MPI only rank 0 writes, so only it locks
        try:
            with budget.limited(self.cfg.max_memory):
                return self._run(stop_at)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _run(self, stop_at: int | None) -> TrainResult:
        until = min(self.total, stop_at) if stop_at is not None else self.total
        self._trim_metrics()
        start, status, message = time.perf_counter(), "done", ""
        self.model.recompute = self.cfg.recompute
        self.model.train()
        self._deadline = start + 60 * self.cfg.max_minutes if self.cfg.max_minutes else None
        with _interrupt_flag(self):  # until the last file is written: SIGTERM stays graceful
            with blas_limited(self.model.backend), \
                    TrainProgress(self.show_progress, self.step, self.total) as bar:
                self._bar = bar
                while self.step < until:
                    status, message = self._one_step()
                    if status != "running":
                        break
                else:
                    status = "done"
            if status != "diverged":
                self.save_checkpoint()
                if status in ("early_stopped", "time_up") or (status == "done"
                                                              and self.step >= self.total):
                    self._save_model(FINAL)
        message = message or self._done_message(status)
        return TrainResult(status, self.step, self.last_loss, self.best_val, message,
                           time.perf_counter() - start)

    def _done_message(self, status: str) -> str:
        if status == "interrupted":
            return (f"interrupted at step {self.step}; checkpoint saved; continue with "
                    f"--resume {self.cfg.out}")
        if status == "time_up":
            return (f"time budget of {self.cfg.max_minutes:g} min reached at step {self.step} "
                    f"of {self.total}; {self._final_note()}")
        if self.step < self.total:
            return f"stopped at step {self.step} of {self.total}; checkpoint saved"
        return f"finished {self.step} steps; {self._final_note()}"

    def _final_note(self) -> str:
        if self.model.adapter is not None:
            return f"adapter in {self._path(LORA_NAMES[FINAL])}"
        return f"model in {self._path(FINAL)}"

    def _one_step(self) -> tuple[str, str]:
        s, t0 = self.step, time.perf_counter()
        lr = self.schedule.lr_at(s)
        self.opt.lr = lr
        x, y = self.data.train_batch(s)
        loss = self.dist.forward_backward(self.model, x, y)  # all ranks' rows under MPI
        norm = self.opt.clip_grad_norm(self.cfg.grad_clip) if self.cfg.grad_clip else None
        if not math.isfinite(loss) or (norm is not None and not math.isfinite(norm)):
            return "diverged", self._diverged_message(s, loss, norm)
        self.opt.step()
        self.step, self.last_loss = s + 1, loss
        self._window[0] += 1
        self._window[1] += time.perf_counter() - t0
        record = {"step": self.step, "loss": loss, "lr": lr,
                  "tokens_per_s": self._window[0] * self.data.tokens_per_batch
                  / max(self._window[1], 1e-9)}
        if norm is not None:
            record["grad_norm"] = norm
        status = self._maybe_evaluate(record)
        if self.step % self.cfg.log_every == 0 or "val_loss" in record or self.step == self.total:
            self._log(record)
            self._window = [0, 0.0]
        self._bar.update(self.step, record)
        if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()
        if self.on_step is not None:
            self.on_step(self)
        if self.dist.agree(self.stop_requested):
            return "interrupted", ""
        if status == "running" and self._deadline and self.dist.agree(
                time.perf_counter() > self._deadline):
            return "time_up", ""
        return status, ""

    def _diverged_message(self, step: int, loss: float, norm: float | None) -> str:
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
        kept = (f"the last good checkpoint (step {self.saved_step}) is kept in "
                f"{self._path(CHECKPOINT)}" if self.saved_step is not None
                else "no checkpoint had been written yet")
        return (f"training diverged at step {step + 1}: {what}. The run stopped; {kept}. "
                f"Try a lower --lr, a --grad-clip, or a longer --warmup.")

    # ---- evaluation and early stopping ---------------------------------------------------
    def evaluate(self) -> float | None:
        """Mean validation loss over the fixed validation batches (None without a split)."""
        batches = self.data.val_batches(self.cfg.eval_batches)
        if not batches:
            return None
        self.model.eval()
        try:
            losses = self.dist.eval_losses(self.model, batches)
        finally:
            self.model.train()
        return float(np.mean(losses))

    def _maybe_evaluate(self, record: dict[str, Any]) -> str:
        due = self.cfg.eval_every and self.step % self.cfg.eval_every == 0
        if not (due or self.step == self.total):
            return "running"
        val = self.evaluate()
        if val is None:
            return "running"
        record["val_loss"], record["val_ppl"] = val, math.exp(min(val, 700.0))
        if self.best_val is None or val < self.best_val - self.cfg.min_delta:
            self.best_val, self.bad_evals = val, 0
            self._save_model(BEST)
            return "running"
        self.bad_evals += 1
        if self.cfg.patience is not None and self.bad_evals >= self.cfg.patience:
            return "early_stopped"
        return "running"

    # ---- metrics.jsonl ----------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_root:
            return
        with open(self._path(METRICS), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _trim_metrics(self) -> None:
        """Drop lines logged after the checkpoint we restart from (a crash can leave some),
        and a torn last line (a kill in the middle of a write), with a notice."""
        path = self._path(METRICS)
        if not self.dist.is_root or not os.path.isfile(path):
            return
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = _metrics_record(line)
            if record is None and number == len(lines) and not line.endswith("\n"):
                warnings.warn(f"{path}: dropped a partial last line (line {number}, "
                              f"{len(line)} characters) left by an interrupted write",
                              stacklevel=3)
                continue
            if record is None:
                raise RunError(f"{path}, line {number}: not a JSON object with a numeric "
                               f"'step': {line.strip()[:80]!r}; fix or delete that line")
            records.append((record["step"], line))
        keep = [line for step, line in records if step <= self.step]
        if len(keep) != len(lines):
            atomic_write_text(path, "".join(keep))


def _metrics_record(line: str) -> dict[str, Any] | None:
    """The JSON object on one metrics line, or None when it is not a valid record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("step"), int)
    return record if ok else None


class _interrupt_flag:
    """While active, Ctrl-C (SIGINT) or SIGTERM asks the trainer to stop after the current
    step and checkpoint; a second Ctrl-C interrupts at once. SIGTERM never escalates: it
    may come twice (the launcher's forwarding and its parent-death watchdog, see
    sllm.jobcontrol), and SIGKILL is the way to stop at once."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.previous: dict[int, Any] = {}  # the handlers to restore, as signal.signal gave them

    def _handler(self, signum: int, frame: Any) -> None:
        self.trainer.stop_requested = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self.previous[signal.SIGINT] or signal.default_int_handler)

    def __enter__(self) -> _interrupt_flag:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handler)
                             for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
