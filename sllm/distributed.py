"""Data-parallel training over MPI (mpi4py): one flat gradient buffer, one Allreduce a step.

Run `mpiexec -n N sllm train ...` (or `sllm train --ranks N`, which calls the mpiexec of
the installed MPI). Every rank holds the whole model. `--batch-size` is the global batch:
each step every rank draws the same global batch (it depends only on seed and step) and
computes the gradient of its own rows. Rank r gets rows [start_r, stop_r), split as evenly
as possible: when B is not a multiple of N the first B mod N ranks take one row more.

Each rank scales its gradient by its share of the non-ignored targets (count_r / total),
then one in-place `Allreduce(SUM)` of the flat gradient buffer leaves on every rank the
gradient of the mean loss over the global batch, exactly what one process computes with
batch B. The optimizer step then runs identically everywhere. Validation batches are
split the same way and their (loss sum, target count) pairs reduced.

Rank 0 alone touches the run directory: it builds or resumes the run (tokenizer, data,
model, checkpoint), then broadcasts everything the others need (`replicate`): a JSON
header, the token ids, the flat parameters and the optimizer buffers (no pickles). Only
rank 0 writes metrics, checkpoints and the progress bar. A rank that raises prints its
error and calls MPI Abort, which ends every rank (`guarded`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SLLMError

INSTALL_HINT = "pip install 'sllm[mpi]' (mpi4py and the mpich wheel)"
# Environment variables through which MPI launchers announce the job size.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_CHUNK = 1 << 28  # elements per Bcast call, well inside MPI's int counts


class DistributedError(SLLMError, RuntimeError):
    """MPI is missing, or a distributed run cannot be set up as asked."""


def split_rows(n: int, size: int, rank: int) -> slice:
    """The rows of a global batch of n that rank `rank` of `size` computes: as even as
    possible, the first n mod size ranks taking one row more."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Group:
    """The ranks of a training job. This base class is the single-process job (rank 0 of
    1): every collective is the identity, so the trainer runs unchanged without MPI."""

    rank = 0
    size = 1
    local_size = 1  # ranks on this machine

    def __init__(self) -> None:
        self.allreduce_seconds = 0.0  # time spent in the gradient Allreduce (incl. waiting)
        self.allreduce_calls = 0

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that does all file I/O."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's rows of a global batch of n rows."""
        return split_rows(n, self.size, self.rank)

    def forward_backward(self, model: Any, tokens: np.ndarray, targets: np.ndarray) -> float:
        """Mean loss over the global batch's non-ignored targets; leaves the gradient of
        that mean in model.flat_grads on every rank."""
        return model.forward_backward(tokens, targets)

    def eval_losses(self, model: Any, batches: Sequence[tuple[np.ndarray, np.ndarray]]
                    ) -> list[float]:
        """The mean loss of each (global) validation batch."""
        return [model.loss(x, y) for x, y in batches]

    def agree(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (stop requests, time limits)."""
        return bool(flag)

    def barrier(self) -> None:
        """Wait for every rank."""

    def abort(self, code: int = 1) -> None:
        """End the whole job now."""
        raise SystemExit(code)


class MPIGroup(Group):
    """COMM_WORLD of a job started by mpiexec."""

    def __init__(self, comm: Any, mpi: Any) -> None:
        super().__init__()
        self.comm, self.MPI = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_size = local.Get_size()
        local.Free()

    def forward_backward(self, model: Any, tokens: np.ndarray, targets: np.ndarray) -> float:
        """This rank's rows, weighted by its share of the targets, summed by one Allreduce."""
        rows = self.rows(len(tokens))
        total = int(np.count_nonzero(targets >= 0))
        mine = int(np.count_nonzero(targets[rows] >= 0))
        loss = model.forward_backward(tokens[rows], targets[rows])
        grads = model.flat_grads
        weight = mine / max(total, 1)
        if weight != 1.0:
            grads *= np.float32(weight)
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, grads, op=self.MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1
        summed = np.array([loss * mine], dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, summed, op=self.MPI.SUM)
        return float(summed[0] / max(total, 1))

    def eval_losses(self, model: Any, batches: Sequence[tuple[np.ndarray, np.ndarray]]
                    ) -> list[float]:
        """Each rank scores its rows of every batch; (loss sum, count) pairs are summed."""
        parts = np.zeros((len(batches), 2), dtype=np.float64)
        for i, (x, y) in enumerate(batches):
            rows = self.rows(len(x))
            if rows.stop > rows.start:
                count = int(np.count_nonzero(y[rows] >= 0))
                parts[i] = model.loss(x[rows], y[rows]) * count, count
        self.comm.Allreduce(self.MPI.IN_PLACE, parts, op=self.MPI.SUM)
        return [float(s / max(c, 1.0)) for s, c in parts]

    def agree(self, flag: bool) -> bool:
        """Logical OR over the ranks."""
        buf = np.array([1 if flag else 0], dtype=np.int32)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.MAX)
        return bool(buf[0])

    def barrier(self) -> None:
        """MPI Barrier."""
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """MPI Abort: mpiexec ends every rank of the job."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    # ---- broadcasting from rank 0 ------------------------------------------------------
    def bcast_json(self, obj: Any) -> Any:
        """Rank 0's JSON-able object on every rank (as UTF-8 bytes, never a pickle)."""
        data = json.dumps(obj).encode() if self.is_root else b""
        n = np.array([len(data)], dtype=np.int64)
        self.comm.Bcast(n, root=0)
        buf = np.frombuffer(data, dtype=np.uint8).copy() if self.is_root else \
            np.empty(int(n[0]), dtype=np.uint8)
        self.bcast_array(buf)
        return json.loads(buf.tobytes().decode())

    def bcast_array(self, array: np.ndarray) -> None:
        """Fill `array` (same shape and dtype on every rank) with rank 0's values."""
        flat = array.reshape(-1)
        if self.is_root and not flat.flags.writeable:  # a read-only memory map
            flat = np.array(flat)
        for start in range(0, flat.size, _CHUNK):
            self.comm.Bcast(flat[start:start + _CHUNK], root=0)


def _detect_size() -> int:
    """The job size the launcher announced in the environment (1 outside mpiexec)."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return 1


def import_mpi() -> Any:
    """mpi4py's MPI module, or DistributedError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"data-parallel training needs mpi4py and an MPI library "
                               f"({e}); install them with {INSTALL_HINT}") from None
    return MPI


_WORLD: Group | None = None


def world() -> Group:
    """The job this process belongs to: an MPIGroup under mpiexec with more than one rank,
    else the single-process Group. Under MPI it also sets the default threads per rank
    (SLLM_NUM_THREADS = cores // ranks on this machine) unless the user set them."""
    global _WORLD
    if _WORLD is None:
        if _detect_size() <= 1:
            _WORLD = Group()
        else:
            MPI = import_mpi()
            _WORLD = MPIGroup(MPI.COMM_WORLD, MPI) if MPI.COMM_WORLD.Get_size() > 1 else Group()
            if _WORLD.size > 1:
                default_threads(_WORLD.local_size)
    return _WORLD


def default_threads(local_ranks: int) -> int:
    """Threads per rank so that ranks x threads = cores; honours SLLM_NUM_THREADS."""
    env = os.environ.get("SLLM_NUM_THREADS", "").strip()
    threads = int(env) if env.isdigit() and int(env) > 0 else max(1, cores() // local_ranks)
    os.environ["SLLM_NUM_THREADS"] = str(threads)
    try:  # numpy's BLAS: one pool per rank, sized like ours
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    except ImportError:
        pass
    return threads


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
    if not group.is_root:
        trainer = _build(header, group)
    for _name, arr in _arrays(trainer):
        group.bcast_array(arr)
    if not group.is_root:
        trainer.model.seed = _rank_seed(trainer.model.seed, group.rank)  # own dropout masks
    trainer.dist = group
    return trainer


def batch_too_small(batch_size: int, ranks: int) -> str:
    """The refusal of a global batch that cannot give every rank a row."""
    return (f"--batch-size {batch_size} is smaller than the {ranks} ranks: every rank needs at "
            f"least one row of the global batch")


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
    yield from sorted(trainer.opt.buffers.items())


def _build(header: dict[str, Any], group: Group) -> Any:
    """A non-root rank's trainer, with empty arrays that replicate() then fills."""
    from . import tokenizer as tokenizers
    from .config import ModelConfig
    from .data import Split, TokenData
    from .model import SLLM
    from .train import TrainConfig, Trainer, make_optimizer
    cfg = TrainConfig.from_dict(header["train_config"])
    d = header["data"]
    arrays = {k: np.empty(n, dtype=np.dtype(dt)) for k, (dt, n) in d["arrays"].items()}
    data = TokenData(Split(arrays["train_ids"], arrays["train_offsets"]),
                     Split(arrays["val_ids"], arrays["val_offsets"]),
                     d["seq_len"], d["batch_size"], d["seed"], d["documents"])
    model = SLLM(ModelConfig.from_json(header["model_config"]), backend=header["backend"],
                 seed=header["seed"], init=None)
    model.dropout_step = header["dropout_step"]
    opt = make_optimizer(cfg, model)
    opt.load_state_dict(dict(header["optimizer"], buffers=opt.buffers))
    trainer = Trainer(model, tokenizers.from_dict(header["tokenizer"]), data, cfg, opt,
                      progress=False)
    trainer.load_state(header["trainer"])
    return trainer


def _rank_seed(seed: int, rank: int) -> int:
    """A dropout seed of its own for each rank (rank 0 keeps the run's seed)."""
    from .model import _mix_seed
    return _mix_seed(seed, rank, 0x5EED)


# ---- failure: one rank's error ends the job -------------------------------------------------
def guarded(group: Group, fn: Callable[[], Any]) -> Any:
    """Run fn; under MPI, an exception on any rank is printed (with the rank) and ends the
    whole job with MPI Abort, so no rank waits forever in a collective."""
    if group.size == 1:
        return fn()
    try:
        return fn()
    except SystemExit as e:
        if e.code in (0, None):
            raise
        group.abort(int(e.code) if isinstance(e.code, int) else 1)
    except BaseException as e:  # noqa: BLE001 - every error must end the job
        if isinstance(e, KeyboardInterrupt):  # Ctrl-C before training started, or twice
            print(f"rank {group.rank}: interrupted", file=sys.stderr, flush=True)
        elif isinstance(e, (SLLMError, ValueError, OSError)):
            print(f"rank {group.rank}: error: {e}", file=sys.stderr, flush=True)
        else:
            print(f"rank {group.rank}: {type(e).__name__}: {e}", file=sys.stderr)
            traceback.print_exc()
        group.abort(1)
    return None


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

    Each rank gets `threads` threads (default cores // ranks). Ctrl-C reaches the ranks
    through mpiexec, which forwards it: they agree to stop after the current step, and
    rank 0 writes the checkpoint."""
    if ranks < 1:
        raise DistributedError(f"--ranks must be >= 1 or 'auto', got {ranks}")
    import_mpi()
    per_rank = threads or max(1, cores() // ranks)
    env = dict(os.environ)
    for var in ("SLLM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads is not None or var not in env:
            env[var] = str(per_rank)
    cmd = [find_mpiexec(), "-n", str(ranks), sys.executable, "-m", "sllm.cli", *args]
    proc = subprocess.Popen(cmd, env=env)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # mpiexec handles Ctrl-C
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


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
               plan: Callable[[], Split] | None = None) -> int:
    """`sllm train --ranks N|auto ...`: run the same command under mpiexec (without --ranks);
    `plan` measures the split for 'auto'. Returns the exit status."""
    n = parse_ranks(ranks)
    if _detect_size() > 1:
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
        return subprocess.call([sys.executable, "-m", "sllm.cli", *args], env=env)
    return launch(n, args, threads)


# ---- --ranks auto: measure ranks x threads on this backend ----------------------------------
@dataclass
class Split:
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
                  repeats: int = 2, n_cores: int | None = None) -> Split:
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
    split = Split(1, n_cores, model.backend.name)
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
             train_config: str | None = None) -> Split:
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
