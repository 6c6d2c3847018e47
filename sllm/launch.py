"""Starting a data-parallel training job: mpiexec on this machine (`sllm train --ranks N`),
the ranks x threads choice of `--ranks auto`, and every rank's copy of rank 0's trainer.

Run `mpiexec -n N sllm train ...` (or `sllm train --ranks N`, which calls the mpiexec of
the installed MPI). Rank 0 alone touches the run directory: it builds or resumes the run
(tokenizer, data, model, checkpoint), then broadcasts everything the others need
(`replicate`): a JSON header, the token ids, the flat parameters and the optimizer buffers
(no pickles). Only rank 0 writes metrics, checkpoints and the progress bar. The ranks'
collectives are sllm/distributed.py's.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .distributed import (
    INSTALL_HINT,
    DistributedError,
    Group,
    MPIGroup,
    batch_too_small,
    detect_size,
    import_mpi,
    split_rows,
)
from .jobcontrol import run_owned
from .threads import cores


# ---- setting a trainer up on every rank ---------------------------------------------------
def replicate(trainer: Any, group: Group) -> Any:
    """Give every rank the trainer rank 0 built (by prepare or resume): rank 0 passes its
    Trainer, the others None. Returns this rank's Trainer, attached to the group."""
    if group.size == 1:
        trainer.dist = group
        return trainer
    assert isinstance(group, MPIGroup)
    header = group.bcast_json(_header(trainer, group) if group.is_root else None)
    if "error" in header:
        raise DistributedError(header["error"])
    quantized = _bcast_quantized(header, group, trainer)
    if not group.is_root:
        trainer = _build(header, group, quantized)
    for _name, arr in _arrays(trainer):
        group.bcast_array(arr)
    if not group.is_root:
        trainer.model.seed = _rank_seed(trainer.model.seed, group.rank)  # own dropout masks
    trainer.dist = group
    return trainer



def _header(trainer: Any, group: Group) -> dict[str, Any]:
    """What the other ranks need to rebuild rank 0's trainer (the arrays follow)."""
    B = trainer.data.batch_size
    if B < group.size:
        return {"error": batch_too_small(B, group.size)}
    opt = trainer.opt.state_dict()
    data = trainer.data
    return {"train_config": trainer.cfg.to_dict(), "tokenizer": trainer.tok.to_dict(),
            "model_config": trainer.model.config.to_dict(),
            "backend": trainer.model.backend.name, "seed": int(trainer.model.seed),
            "dropout_step": int(trainer.model.dropout_step),
            "optimizer": {k: v for k, v in opt.items() if k != "buffers"},
            "quantized": {n: [q.qtype, list(q.data.shape)]
                          for n, q in sorted(trainer.model.quantized_weights().items())},
            "trainer": trainer.state(),
            "data": {"seq_len": data.seq_len, "batch_size": B, "seed": data.seed,
                     "documents": data.documents,
                     "arrays": {k: [v.dtype.str, len(v)] for k, v in _data_arrays(data)}}}


def _data_arrays(data: Any) -> list[tuple[str, np.ndarray]]:
    return [("train_ids", data.train.ids), ("train_offsets", data.train.offsets),
            ("val_ids", data.val.ids), ("val_offsets", data.val.offsets)]


def _arrays(trainer: Any) -> Iterator[tuple[str, np.ndarray]]:
    """Every array rank 0 broadcasts, in order: token ids, parameters, optimizer buffers."""
    yield from _data_arrays(trainer.data)
    yield "params", trainer.model.flat_params
    if trainer.model.adapter is not None:  # a LoRA run
        yield "adapter", trainer.model.adapter.flat_params
    yield from sorted(trainer.opt.buffers.items())


def _bcast_quantized(header: dict[str, Any], group: MPIGroup, trainer: Any
                     ) -> dict[str, tuple[str, np.ndarray]]:
    """Rank 0's quantized weights (a LoRA run on a quantized base) on every rank, as ggml's
    rows {name: (qtype, rows)}: the other ranks build their model from them (the backend
    packs them its own way), before the float tensors and the adapter arrive."""
    own = trainer.model.quantized_weights() if group.is_root else {}
    rows = {}
    for name, (qtype, shape) in header.get("quantized", {}).items():
        arr = np.ascontiguousarray(own[name].data) if group.is_root else \
            np.empty(tuple(shape), dtype=np.uint8)
        group.bcast_array(arr)
        rows[name] = (qtype, arr)
    return rows


def _build(header: dict[str, Any], group: MPIGroup,
           quantized: dict[str, tuple[str, np.ndarray]]) -> Any:
    """A non-root rank's trainer, with empty arrays that replicate() then fills (but for
    the quantized weights, which come filled)."""
    from . import tokenizer as tokenizers
    from .config import ModelConfig
    from .data import TokenData, TokenSplit
    from .model import SLLM
    from .train import TrainConfig, Trainer, attach_lora, make_optimizer
    cfg = TrainConfig.from_dict(header["train_config"])
    d = header["data"]
    arrays = {k: np.empty(n, dtype=np.dtype(dt)) for k, (dt, n) in d["arrays"].items()}
    data = TokenData(TokenSplit(arrays["train_ids"], arrays["train_offsets"]),
                     TokenSplit(arrays["val_ids"], arrays["val_offsets"]),
                     d["seq_len"], d["batch_size"], d["seed"], d["documents"])
    model = SLLM(ModelConfig.from_json(header["model_config"]), backend=header["backend"],
                 seed=header["seed"], init=None, quantized=quantized or None)
    model.dropout_step = header["dropout_step"]
    attach_lora(cfg, model, check=False)
    opt = make_optimizer(cfg, model)
    opt.load_state_dict(dict(header["optimizer"], buffers=opt.buffers))
    trainer = Trainer(model, tokenizers.from_dict(header["tokenizer"]), data, cfg, opt,
                      progress=False)
    trainer.load_state(header["trainer"])
    return trainer


def _rank_seed(seed: int, rank: int) -> int:
    """A dropout seed of its own for each rank (rank 0 keeps the run's seed)."""
    from .model import mix_seed
    return mix_seed(seed, rank, 0x5EED)


# ---- launching on this machine ----------------------------------------------------------------
def find_mpiexec() -> str:
    """The mpiexec of the installed MPI: next to this Python first (the mpich wheel puts it
    there), then on PATH."""
    here = os.path.dirname(sys.executable)
    for path in (os.path.join(here, "mpiexec"), shutil.which("mpiexec")):
        if path and os.access(path, os.X_OK):
            return path
    raise DistributedError(f"no mpiexec found next to {sys.executable} or on PATH; "
                           f"install MPI with {INSTALL_HINT}")


def launch(ranks: int, args: list[str], threads: int | None = None) -> int:
    """Run `sllm <args>` on `ranks` local ranks under mpiexec; returns its exit status.

    Each rank gets `threads` threads (default cores // ranks). This process owns the job
    (sllm.jobcontrol): Ctrl-C or SIGTERM to it reaches every rank (the launcher signals
    each process of the job): they agree to stop after the current step, and rank 0 writes the
    checkpoint. If this process is killed, the ranks stop within seconds."""
    if ranks < 1:
        raise DistributedError(f"--ranks must be >= 1 or 'auto', got {ranks}")
    import_mpi()
    per_rank = threads or max(1, cores() // ranks)
    env = dict(os.environ)
    for var in ("SLLM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads is not None or var not in env:
            env[var] = str(per_rank)
    cmd = [find_mpiexec(), "-n", str(ranks), sys.executable, "-m", "sllm", *args]
    return run_owned(cmd, env)


def strip_option(argv: Sequence[str], option: str) -> list[str]:
    """argv without `option VALUE` / `option=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def parse_ranks(text: str) -> int | None:
    """--ranks: a positive integer, or None for 'auto'."""
    if text.strip().lower() == "auto":
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise DistributedError(f"--ranks must be a positive integer or 'auto', got {text!r}")
    return int(text)


def launch_cli(ranks: str, argv: Sequence[str], console: Any,
               plan: Callable[[], RankSplit] | None = None) -> int:
    """`sllm train --ranks N|auto ...`: run the same command under mpiexec (without --ranks);
    `plan` measures the split for 'auto'. Returns the exit status."""
    n = parse_ranks(ranks)
    if detect_size() > 1:
        raise DistributedError("--ranks starts mpiexec itself; under mpiexec, leave it out "
                               "(mpiexec -n N sllm train ...)")
    threads = None
    if n is None:
        if plan is None:
            raise DistributedError("--ranks auto needs a measurement plan")
        split = plan()
        n, threads = split.ranks, split.threads
        console.print(f"--ranks auto: {split.describe()}", highlight=False)
    args = strip_option(argv, "--ranks")
    if n == 1:
        env = dict(os.environ)
        if threads:
            env["SLLM_NUM_THREADS"] = str(threads)
        return run_owned([sys.executable, "-m", "sllm", *args], env)
    return launch(n, args, threads)


# ---- --ranks auto: measure ranks x threads on this backend ----------------------------------
@dataclass
class RankSplit:
    """A choice of ranks x threads, with the measured seconds per step of each candidate."""

    ranks: int
    threads: int
    backend: str
    seconds: dict[tuple[int, int], float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: each candidate's measured step time, the chosen one first."""
        order = sorted(self.seconds.items(), key=lambda kv: kv[1])
        parts = [f"{r} rank{'s' if r > 1 else ''} x {t} thread{'s' if t > 1 else ''} "
                 f"{_ms(s)} ms/step" for (r, t), s in order]
        return f"on {self.backend}: " + " < ".join(parts)


def _ms(seconds: float) -> str:
    """Milliseconds with three significant digits, without exponents."""
    ms = seconds * 1000
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


@contextmanager
def _threads(backend: Any, n: int) -> Iterator[None]:
    """Run with n kernel threads (the backend's own, and numpy's BLAS when threadpoolctl
    is installed)."""
    before = backend.capabilities.get("threads") if hasattr(backend, "capabilities") else None
    backend.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
        with threadpool_limits(n):
            yield
    except ImportError:
        yield
    finally:
        if isinstance(before, int) and before > 0:
            backend.set_num_threads(before)


def measure_split(model_config: Any, backend: str, batch_size: int, seq_len: int,
                  repeats: int = 2, n_cores: int | None = None) -> RankSplit:
    """Pick ranks x threads (ranks x threads = cores) by timing one rank's share of a
    training step at each candidate's thread count, plus the Allreduce estimated as two
    copies of the gradient buffer. Measured in this process: it assumes ranks do not slow
    each other down beyond sharing the cores (docs/distributed.md compares with real runs)."""
    from .model import SLLM
    n_cores = n_cores or cores()
    model = SLLM(model_config, backend=backend, seed=0)
    rng = np.random.default_rng(0)
    V = model.config.vocab_size
    tokens = rng.integers(0, V, (batch_size, seq_len)).astype(np.int32)
    copy_s = _copy_seconds(model.flat_grads)
    split = RankSplit(1, n_cores, model.backend.name)
    for ranks in [r for r in range(1, n_cores + 1) if n_cores % r == 0 and r <= batch_size]:
        threads = n_cores // ranks
        rows = split_rows(batch_size, ranks, 0)
        with _threads(model.backend, threads):
            times = []
            for _ in range(repeats + 1):  # the first is a warm-up
                t0 = time.perf_counter()
                model.forward_backward(tokens[rows], tokens[rows])
                times.append(time.perf_counter() - t0)
        split.seconds[(ranks, threads)] = min(times[1:]) + (2 * copy_s if ranks > 1 else 0.0)
    split.ranks, split.threads = min(split.seconds, key=split.seconds.__getitem__)
    return split


def _copy_seconds(buf: np.ndarray) -> float:
    """Time of one copy of a buffer this size (the shared-memory Allreduce makes ~two)."""
    src, dst = np.ones(buf.size, np.float32), np.empty(buf.size, np.float32)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return best


def plan_for(options: dict[str, Any], resume: str | None = None,
             train_config: str | None = None) -> RankSplit:
    """measure_split for the run `sllm train` options describe (a new run, or --resume)."""
    import dataclasses

    from .config import ModelConfig, resolve_config
    from .train import DEFAULT_VOCAB, TrainConfig
    path = os.path.join(resume, "train_config.json") if resume else train_config
    cfg = TrainConfig.from_json(path) if path else TrainConfig()
    cfg = cfg.replace(**{k: options.get(k) for k in ("model", "backend", "batch_size",
                                                      "seq_len", "vocab_size")})
    mcfg = resolve_config(cfg.model) if cfg.model is not None else ModelConfig()
    mcfg = dataclasses.replace(mcfg, vocab_size=cfg.vocab_size or DEFAULT_VOCAB)
    return measure_split(mcfg, cfg.backend, cfg.batch_size, cfg.seq_len or mcfg.max_seq_len)
