"""Data-parallel training over MPI: 2-rank runs under the mpiexec of the mpich wheel
(loopback only), compared with one process; resume; a failing rank ends the job.

The MPI tests need the `mpi` extra. Without it they skip, unless SLLM_REQUIRE_MPI=1 (as
.ci/run sets), where a missing MPI is a failure.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

import sllm
from sllm import distributed, launch
from sllm import train as T
from sllm.checkpoint import load_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = dict(vocab_size=300, embedding_dim=16, num_layers=2, num_heads=2, ffn_hidden_dim=32,
            max_seq_len=16, dropout=0.0)
TIMEOUT = 300  # seconds for any one job: generous, the machine is shared


def _have_mpi() -> bool:
    try:
        distributed.import_mpi()
        launch.find_mpiexec()
        return True
    except distributed.DistributedError:
        return False


needs_mpi = pytest.mark.skipif(not _have_mpi() and not os.environ.get("SLLM_REQUIRE_MPI"),
                               reason="the mpi extra is not installed (pip install 'sllm[mpi]')")


# ---- pieces that need no MPI ------------------------------------------------------------
@pytest.mark.parametrize("n,size", [(8, 2), (5, 2), (7, 3), (3, 3), (16, 1)])
def test_split_rows_covers_the_batch_evenly(n, size):
    parts = [distributed.split_rows(n, size, r) for r in range(size)]
    rows = [i for p in parts for i in range(p.start, p.stop)]
    assert rows == list(range(n))
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_strip_option_and_parse_ranks():
    argv = ["train", "--ranks", "2", "--steps", "5", "--ranks=auto", "-q"]
    assert launch.strip_option(argv, "--ranks") == ["train", "--steps", "5", "-q"]
    assert launch.parse_ranks("4") == 4 and launch.parse_ranks("auto") is None
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(distributed.DistributedError, match="--ranks"):
            launch.parse_ranks(bad)


def test_ranks_under_mpiexec_is_refused(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(distributed.DistributedError, match="leave it out"):
        launch.launch_cli("2", ["train"], None)


def test_single_process_group_is_the_identity(tmp_path):
    group = distributed.world()
    assert group.size == 1 and group.is_root and group.rows(5) == slice(0, 5)
    trainer = T.prepare(_cfg(tmp_path), progress=False)
    assert launch.replicate(trainer, group) is trainer
    assert distributed.guarded(group, lambda: 42) == 42
    assert not group.agree(False) and group.agree(True)


def test_missing_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as if not installed
    with pytest.raises(distributed.DistributedError, match=r"sllm\[mpi\]"):
        distributed.import_mpi()
    with pytest.raises(distributed.DistributedError, match=r"sllm\[mpi\]"):
        launch.launch(2, ["train"])


def test_auto_measures_each_split():
    split = launch.measure_split(sllm.ModelConfig(**TINY), "numpy", 4, 16, repeats=1,
                                      n_cores=2)
    assert set(split.seconds) == {(1, 2), (2, 1)}
    assert (split.ranks, split.threads) in split.seconds and split.ranks * split.threads == 2
    assert split.seconds[(split.ranks, split.threads)] == min(split.seconds.values())
    assert "numpy" in split.describe() and "ms/step" in split.describe()


# ---- 2-rank jobs ------------------------------------------------------------------------
def _cfg(out, **kw):
    base = dict(model=TINY, demo_chars=30_000, vocab_size=300, steps=20, batch_size=8,
                seq_len=16, eval_every=10, eval_batches=2, log_every=1, checkpoint_every=10,
                warmup=5, out=str(out), backend="numpy", lr=3e-3)
    base.update(kw)
    return T.TrainConfig(**base)


def _args(cfg: T.TrainConfig) -> list[str]:
    """`sllm train` flags for a TrainConfig (model written next to the run directory)."""
    model = f"{cfg.out}.model.json"
    with open(model, "w") as f:
        json.dump(cfg.model, f)
    args = ["--config", model, "-q"]
    for key in ("demo_chars", "vocab_size", "steps", "batch_size", "seq_len", "eval_every",
                "eval_batches", "log_every", "checkpoint_every", "warmup", "out", "backend",
                "lr"):
        args += [f"--{key.replace('_', '-')}", str(getattr(cfg, key))]
    return args + (["--documents"] if cfg.documents else [])


def _sllm(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sllm.cli", "train", *args],
                          capture_output=True, text=True, timeout=TIMEOUT, **kw)


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _assert_same_losses(a, b, rel=1e-5):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert math.isclose(ra["loss"], rb["loss"], rel_tol=rel), (ra, rb)
        assert ("val_loss" in ra) == ("val_loss" in rb)
        if "val_loss" in ra:
            assert math.isclose(ra["val_loss"], rb["val_loss"], rel_tol=rel), (ra, rb)


@needs_mpi
@pytest.mark.parametrize("backend,kw", [
    ("numpy", {}),
    ("numpy", {"batch_size": 5, "documents": True}),  # uneven rows, unequal target counts
    ("cpp", {}),
    ("wasm-simd", {}),
    ("wasm", {"steps": 10}),
    ("cpp", {"model": {**TINY, "architecture": "llama", "num_kv_heads": 1}}),  # MQA llama
])
def test_two_ranks_match_one_process(tmp_path, backend, kw):
    if backend not in sllm.backends.available():
        pytest.skip(f"backend {backend} is not available here")
    one = _cfg(tmp_path / "one", backend=backend, **kw)
    T.prepare(one, progress=False).run()
    two = _cfg(tmp_path / "two", backend=backend, **kw)
    proc = _sllm(*_args(two), "--ranks", "2")
    assert proc.returncode == 0, proc.stderr
    assert "2 ranks x 1 thread" in proc.stdout
    a, b = _metrics(one.out), _metrics(two.out)
    assert len(a) == one.steps
    _assert_same_losses(a, b)
    # rank 0's final weights are the one-process weights, up to rounding (that Adam blows up
    # where the true gradient is 0, as for the key biases of attention: hence per tensor)
    pa = sllm.load(tmp_path / "one" / "model.sllm").parameters()
    pb = sllm.load(tmp_path / "two" / "model.sllm").parameters()
    for k in pa:
        assert np.linalg.norm(pa[k] - pb[k]) <= 1e-3 * np.linalg.norm(pa[k]), k


@needs_mpi
def test_ranks_auto_measures_then_trains(tmp_path):
    cfg = _cfg(tmp_path / "auto", steps=4, eval_every=0)
    proc = _sllm(*_args(cfg), "--ranks", "auto")
    assert proc.returncode == 0, proc.stderr
    assert "--ranks auto: on numpy:" in proc.stdout and "ms/step" in proc.stdout
    assert [r["step"] for r in _metrics(cfg.out)] == [1, 2, 3, 4]


@needs_mpi
def test_batch_smaller_than_ranks_is_refused(tmp_path):
    proc = _sllm(*_args(_cfg(tmp_path / "r", batch_size=1)), "--ranks", "2")
    assert proc.returncode != 0
    assert "--batch-size 1 is smaller than the 2 ranks" in proc.stderr


@needs_mpi
def test_ctrl_c_checkpoints_and_resume_continues_exactly(tmp_path):
    straight = _cfg(tmp_path / "a", steps=400, eval_every=100, checkpoint_every=0)
    T.prepare(straight, progress=False).run()
    cut = _cfg(tmp_path / "b", steps=400, eval_every=100, checkpoint_every=0)
    # as a terminal does: SIGINT to the launcher's whole process group
    launcher = subprocess.Popen([sys.executable, "-m", "sllm.cli", "train", *_args(cut),
                                 "--ranks", "2"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + TIMEOUT
    while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGINT)
    out, errs = launcher.communicate(timeout=TIMEOUT)
    assert launcher.returncode == 0, errs
    assert "interrupted at step" in out and "checkpoint saved" in out
    stopped = load_checkpoint(tmp_path / "b" / "checkpoint.sllm").trainer_state["step"]
    assert 0 < stopped < 400
    proc = _sllm("--resume", str(tmp_path / "b"), "-q", "--ranks", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"resuming {tmp_path / 'b'} at step {stopped}" in proc.stdout
    _assert_same_losses(_metrics(tmp_path / "a"), _metrics(tmp_path / "b"))


@needs_mpi
def test_resume_with_another_rank_count(tmp_path):
    straight = _cfg(tmp_path / "a", steps=20)
    T.prepare(straight, progress=False).run()
    first = _cfg(tmp_path / "b", steps=20)
    T.prepare(first, progress=False).run(stop_at=10)  # one process, checkpoint at step 10
    proc = _sllm("--resume", str(tmp_path / "b"), "-q", "--ranks", "2")
    assert proc.returncode == 0, proc.stderr
    _assert_same_losses(_metrics(tmp_path / "a"), _metrics(tmp_path / "b"))


@needs_mpi
@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_failing_rank_stops_the_job(tmp_path, mode):
    out = tmp_path / "run"
    cmd = [launch.find_mpiexec(), "-n", "2", sys.executable,
           os.path.join(HERE, "mpi_worker.py"), mode, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    ended = time.time()
    assert proc.returncode != 0
    failed_at = float((out / "failed_at").read_text())
    assert ended - failed_at < 30, "the job kept running after a rank failed"
    if mode == "raise":  # the whole traceback, then the abort (MPICH's own "Abort(1) ..." line
        # comes after the rank's output is read, and mpiexec can drop it: hydra exits on the abort)
        assert "rank 1: RuntimeError: injected failure on rank 1\n" in proc.stderr
        assert "\nRuntimeError: injected failure on rank 1\nrank 1: MPI_Abort(1) ends every rank " \
               "of the job\n" in proc.stderr
    ckpt = load_checkpoint(out / "checkpoint.sllm")  # the last checkpoint is intact
    assert ckpt.trainer_state["step"] == 4


_ABORTS = """
import sys, time
from sllm import distributed, runlock
lock = runlock.acquire(sys.argv[1])  # as rank 0 holds it from prepare on
class Comm:
    def Abort(self, code):  # what MPI_Abort would find: is the rank's output read yet?
        print(f"unread {distributed._unread(2)} at {time.monotonic()!r}", flush=True)
group = distributed.MPIGroup.__new__(distributed.MPIGroup)
group.comm, group.rank = Comm(), 1
group.abort(3)
"""


def test_abort_releases_the_run_lock_and_waits_until_mpiexec_has_read_the_error(tmp_path):
    # hydra's proxy serves a rank's PMI socket before its stderr pipe and mpiexec exits on the
    # abort: a traceback still in the pipe was cut after its first line (2 CI runs). The
    # reader here (mpiexec's proxy) takes the rank's stderr only 0.5 s after it was written.
    proc = subprocess.Popen([sys.executable, "-c", _ABORTS, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert proc.stderr is not None
    reading = time.monotonic()  # the same clock in every process
    err = proc.stderr.readline()
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 3
    assert err == "rank 1: MPI_Abort(3) ends every rank of the job\n"
    unread, aborted = out.split()[1], float(out.split()[3])
    assert unread == "0" and aborted > reading, (out, reading)
    assert list(tmp_path.iterdir()) == []  # MPI Abort skips the lock's finalizer


def test_wait_until_read_gives_up_and_skips_what_is_no_pipe(tmp_path):
    r, w = os.pipe()
    try:
        os.write(w, b"never read")
        t0 = time.monotonic()
        assert not distributed.wait_until_read([w], 0.2)
        assert 0.2 <= time.monotonic() - t0 < 5
        os.read(r, 100)
        assert distributed.wait_until_read([w], 0.2)
    finally:
        os.close(r)
        os.close(w)
    with open(tmp_path / "log", "w") as f:  # a file (or a terminal) holds nothing back
        f.write("x")
        f.flush()
        assert distributed.wait_until_read([f.fileno()], 0.0)
