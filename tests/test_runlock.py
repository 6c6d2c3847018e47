"""One writer per run directory: the lock, --overwrite, resume
keeping its overrides, and a torn metrics line."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sllm import runlock
from sllm import train as T
from sllm.checkpoint import RunError
from sllm.runlock import RunLockedError

TINY = dict(vocab_size=200, embedding_dim=16, num_layers=1, num_heads=2, ffn_hidden_dim=32,
            max_seq_len=16, dropout=0.0)
SLLM_BIN = str(Path(sys.executable).parent / "sllm")


def _cfg(out, **kw):
    base = dict(model=TINY, demo_chars=20_000, vocab_size=300, steps=6, batch_size=2,
                seq_len=16, eval_every=3, eval_batches=1, log_every=1, checkpoint_every=3,
                warmup=1, out=str(out), backend="numpy")
    base.update(kw)
    return T.TrainConfig(**base)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_names_its_owner_and_is_released(tmp_path):
    lock = runlock.acquire(tmp_path / "r")
    owner = json.loads((tmp_path / "r" / "run.lock").read_text())
    assert owner["pid"] == os.getpid() and owner["host"] and owner["started"]
    with pytest.raises(RunLockedError, match=f"being written by pid {os.getpid()} on host"):
        runlock.acquire(tmp_path / "r")
    lock.release()
    lock.release()  # twice is fine
    assert not (tmp_path / "r" / "run.lock").exists()
    with runlock.run_lock(tmp_path / "r") as again:
        assert again.held
    assert not again.held and runlock.read_owner(tmp_path / "r") is None


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / "run.lock").write_text(json.dumps(
        {"pid": _dead_pid(), "host": os.uname().nodename, "started": "2020-01-01T00:00:00Z"}))
    with pytest.warns(UserWarning, match="taking over the lock left by pid .* no longer running"):
        lock = runlock.acquire(tmp_path)
    assert runlock.read_owner(tmp_path)["pid"] == os.getpid()
    lock.release()


def test_reused_pid_counts_as_dead(tmp_path):
    (tmp_path / "run.lock").write_text(json.dumps(
        {"pid": os.getpid(), "host": os.uname().nodename, "started": "then",
         "proc_start": -1}))  # this pid, but a different process start time
    with pytest.warns(UserWarning, match="taking over"):
        runlock.acquire(tmp_path).release()


def test_lock_of_another_host_is_not_presumed_dead(tmp_path):
    (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere",
                                                   "started": "then"}))
    with pytest.raises(RunLockedError, match="another host's process cannot be checked.*remove"):
        runlock.acquire(tmp_path)


def test_new_run_refused_on_a_directory_holding_a_run_unless_overwrite(tmp_path):
    (tmp_path / "train_config.json").write_text("{}")  # a run that crashed before a checkpoint
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match=r"already holds a run \(train_config.json\).*--overwrite"):
        T.prepare(_cfg(tmp_path), progress=False)
    trainer = T.prepare(_cfg(tmp_path), progress=False, overwrite=True)
    assert trainer.run().status == "done"
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the run's own files go
    assert not (tmp_path / "run.lock").exists()


def test_concurrent_trains_on_one_directory_one_refuses(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--demo-chars", "20000", "--vocab-size", "300", "--batch-size", "2",
            "--seq-len", "16", "--backend", "numpy", "--eval-every", "0", "-q"]
    (tmp_path / "m.json").write_text(json.dumps(TINY))
    first = subprocess.Popen([SLLM_BIN, *args, "--config", str(tmp_path / "m.json"),
                              "--steps", "100000", "--out", str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (run / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert (run / "run.lock").exists(), first.stderr.read() if first.poll() else "no lock"
        for extra in (["--out", str(run)], ["--resume", str(run)]):
            second = subprocess.run([SLLM_BIN, *args, "--steps", "5", *extra],
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 1
            assert f"is being written by pid {first.pid} on host" in second.stderr
            assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
    assert "interrupted" in out, err
    assert not (run / "run.lock").exists()
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one writer: no duplicated steps


def test_resume_keeps_its_overrides(tmp_path):
    T.prepare(_cfg(tmp_path, steps=4), progress=False).run()
    resumed = T.resume(tmp_path, progress=False, steps=12, lr=3e-3)
    resumed.run(stop_at=8)  # as a Ctrl-C would: a checkpoint at step 8
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["steps"] == 12 and saved["lr"] == 3e-3
    again = T.resume(tmp_path, progress=False)  # no overrides: the same plan continues
    assert (again.step, again.total, again.cfg.lr) == (8, 12, 3e-3)
    assert again.run().step == 12


def test_torn_last_metrics_line_is_dropped_with_a_notice(tmp_path):
    T.prepare(_cfg(tmp_path), progress=False).run()
    metrics = tmp_path / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"step": 7, "loss": 3.1, "l')  # killed mid-write
    trainer = T.resume(tmp_path, progress=False, steps=8)
    with pytest.warns(UserWarning, match="metrics.jsonl: dropped a partial last line"):
        trainer.run()
    lines = metrics.read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 9))


def test_bad_metrics_line_names_file_and_line(tmp_path):
    T.prepare(_cfg(tmp_path), progress=False).run()
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    lines[2] = "garbage\n"
    metrics.write_text("".join(lines))
    with pytest.raises(RunError, match=r"metrics.jsonl, line 3: not a JSON object"):
        T.resume(tmp_path, progress=False, steps=8).run()
    assert not (tmp_path / "run.lock").exists()  # released on the error


def test_resume_takes_overrides_from_a_train_config_file(tmp_path):
    from typer.testing import CliRunner

    from sllm.cli import app
    T.prepare(_cfg(tmp_path / "r", steps=3), progress=False).run()
    (tmp_path / "more.json").write_text(json.dumps({"steps": 5, "lr": 2e-3}))
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "r"),
                                      "--train-config", str(tmp_path / "more.json"), "-q"])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "at step 3 of 5" in result.output
    saved = json.loads((tmp_path / "r" / "train_config.json").read_text())
    assert (saved["steps"], saved["lr"]) == (5, 2e-3)
    (tmp_path / "bad.json").write_text(json.dumps({"seq_len": 8}))
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "r"),
                                      "--train-config", str(tmp_path / "bad.json"), "-q"])
    assert result.exit_code == 1 and "seq_len cannot change when resuming" in result.output


def test_an_interrupt_while_locking_leaves_no_lock(tmp_path, monkeypatch):
    # A SIGTERM used to be able to land between creating run.lock and writing its owner,
    # leaving an empty lock that nobody released (test_launcher_signals caught it).
    def interrupted(self, run_dir, owner):
        raise KeyboardInterrupt

    monkeypatch.setattr(runlock.RunLock, "__init__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runlock.acquire(tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the lock nor its draft


def test_an_interrupt_as_the_lock_appears_leaves_no_lock(tmp_path, monkeypatch):
    # SIGTERM to `sllm train --ranks 1` as run.lock appeared (KeyboardInterrupt at the
    # return of os.link) left run.lock behind with its owner gone (CI, fresh clone).
    real_link = os.link

    def link(src, dst):
        real_link(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(runlock.os, "link", link)
    with pytest.raises(KeyboardInterrupt):
        runlock.acquire(tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the lock nor its draft


def test_an_interrupt_while_the_lock_is_released_still_removes_it(tmp_path, monkeypatch):
    # The finalizer forgets the lock, then removes the file: a second Ctrl-C in between left
    # run.lock behind. The signal now waits until the release is done.
    real_remove = runlock._remove_if_ours

    def remove(path, token):
        os.kill(os.getpid(), signal.SIGINT)
        real_remove(path, token)

    monkeypatch.setattr(runlock, "_remove_if_ours", remove)
    lock = runlock.acquire(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        lock.release()
    assert list(tmp_path.iterdir()) == [] and not lock.held


def test_a_refused_lock_is_left_to_its_owner(tmp_path):
    lock = runlock.acquire(tmp_path)
    with pytest.raises(RunLockedError):
        runlock.acquire(tmp_path)
    assert runlock.read_owner(tmp_path)["token"] == lock.owner["token"]
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_a_lock_appears_with_its_owner_written(tmp_path, monkeypatch):
    seen = []
    real_link = os.link

    def link(src, dst):
        seen.append(json.loads(open(src, encoding="utf-8").read()))
        real_link(src, dst)

    monkeypatch.setattr(runlock.os, "link", link)
    lock = runlock.acquire(tmp_path)
    assert seen and seen[0]["pid"] == os.getpid() == runlock.read_owner(tmp_path)["pid"]
    lock.release()
    assert list(tmp_path.iterdir()) == []
