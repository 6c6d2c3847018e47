"""Trainer: exact resume, early stopping, NaN guard, Ctrl-C, checkpoints, bad run dirs."""
import json
import math
import os
import signal

import numpy as np
import pytest

import sllm
from sllm import train as T
from sllm.checkpoint import RunError

TINY = dict(vocab_size=99, embedding_dim=16, num_layers=2, num_heads=2, ffn_hidden_dim=32,
            max_seq_len=16, dropout=0.1)


def _cfg(out, **kw):
    base = dict(model=TINY, demo_chars=30_000, vocab_size=300, steps=30, batch_size=4,
                seq_len=16, eval_every=10, eval_batches=2, log_every=1, checkpoint_every=10,
                warmup=5, out=str(out), backend="numpy")
    base.update(kw)
    return T.TrainConfig(**base)


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("optimizer,arch", [("adamw", "gpt2"), ("sgd", "gpt2"), ("adamw", "llama")])
def test_resume_equals_uninterrupted_run(tmp_path, optimizer, arch):
    model = {**TINY, "architecture": arch}
    straight = T.prepare(_cfg(tmp_path / "a", optimizer=optimizer, model=model),
                         progress=False).run()
    first = T.prepare(_cfg(tmp_path / "b", optimizer=optimizer, model=model),
                      progress=False).run(stop_at=13)
    assert first.step == 13 and not (tmp_path / "b" / "model.sllm").exists()
    resumed = T.resume(tmp_path / "b", progress=False)
    assert resumed.step == 13 and resumed.model.dropout_step > 0
    second = resumed.run()
    assert straight.status == second.status == "done"
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 31))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r.get("val_loss") for r in a] == [r.get("val_loss") for r in b]
    pa = sllm.load(tmp_path / "a" / "model.sllm").parameters()
    pb = sllm.load(tmp_path / "b" / "model.sllm").parameters()
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)


def test_metrics_lines_and_loss_falls(tmp_path):
    result = T.prepare(_cfg(tmp_path, steps=40, lr=3e-3), progress=False).run()
    recs = _metrics(tmp_path)
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(recs[0])
    vals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in vals] == [10, 20, 30, 40]
    assert math.isclose(vals[0]["val_ppl"], math.exp(vals[0]["val_loss"]))
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] - 0.3
    assert result.best_val_loss == min(r["val_loss"] for r in vals)
    for name in ("checkpoint.sllm", "best.sllm", "model.sllm", "vocab.json", "train_config.json"):
        assert (tmp_path / name).exists()
    model = sllm.load(tmp_path / "model.sllm")
    assert model.tokenizer["type"] == "word" and model.metadata["kind"] == "model"


def test_early_stopping(tmp_path):
    # lr 0: validation never improves, so patience 2 stops at the third evaluation
    result = T.prepare(_cfg(tmp_path, lr=0.0, min_lr=0.0, patience=2, steps=100),
                       progress=False).run()
    assert result.status == "early_stopped" and result.step == 30
    assert (tmp_path / "model.sllm").exists()


def test_time_budget_stops_and_saves(tmp_path):
    trainer = T.prepare(_cfg(tmp_path, max_minutes=1e-9), progress=False)
    result = trainer.run()
    assert result.status == "time_up" and result.step == 1
    assert "time budget" in result.message and (tmp_path / "model.sllm").exists()


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
    trainer = T.prepare(_cfg(tmp_path), progress=False)

    def poison(tr):
        if tr.step == 12:
            tr.model.parameters()["wte"][:] = np.nan
    trainer.on_step = poison
    result = trainer.run()
    assert result.status == "diverged" and result.step == 12
    assert "diverged at step 13" in result.message and "step 10" in result.message
    from sllm.serialize import read_model_file
    meta = read_model_file(tmp_path / "checkpoint.sllm").metadata
    assert meta["trainer"]["step"] == 10
    assert np.isfinite(read_model_file(tmp_path / "checkpoint.sllm").tensors["wte"]).all()


def test_ctrl_c_saves_and_stops(tmp_path):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run as a background job
    trainer = T.prepare(_cfg(tmp_path, checkpoint_every=0), progress=False)

    def interrupt(tr):
        if tr.step == 7:
            os.kill(os.getpid(), signal.SIGINT)
    trainer.on_step = interrupt
    result = trainer.run()
    assert result.status == "interrupted" and result.step == 7
    assert "--resume" in result.message
    assert T.resume(tmp_path, progress=False).step == 7
    assert signal.getsignal(signal.SIGINT) is before  # the handler the run found is restored


def test_epochs_set_the_step_count(tmp_path):
    trainer = T.prepare(_cfg(tmp_path, steps=1000, epochs=0.5), progress=False)
    per_epoch = len(trainer.data.train.ids) / (4 * 16)
    assert trainer.total == math.ceil(0.5 * per_epoch)


def test_resume_bad_directories(tmp_path):
    with pytest.raises(RunError, match="no such run directory"):
        T.resume(tmp_path / "nope")
    with pytest.raises(RunError, match="nothing to resume"):
        T.resume(tmp_path)
    T.prepare(_cfg(tmp_path / "r", steps=3), progress=False).run()
    with pytest.raises(RunError, match="cannot change when resuming"):
        T.resume(tmp_path / "r", progress=False, seq_len=8)
    with pytest.raises(RunError, match="already holds a run"):
        T.prepare(_cfg(tmp_path / "r"), progress=False)
    ckpt = tmp_path / "r" / "checkpoint.sllm"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(RunError, match="corrupt"):
        T.resume(tmp_path / "r")


def test_model_vocab_follows_tokenizer_with_warning(tmp_path):
    with pytest.warns(UserWarning, match="says vocab_size 99; using the tokenizer's"):
        trainer = T.prepare(_cfg(tmp_path, vocab_size=350), progress=False)
    assert trainer.model.config.vocab_size == trainer.tok.vocab_size == 350


def test_bad_training_settings(tmp_path):
    with pytest.raises(sllm.ConfigError, match="longer than the model's max_seq_len"):
        T.prepare(_cfg(tmp_path, seq_len=64), progress=False)
    with pytest.raises(sllm.ConfigError, match=r"optimizer \(--optimizer\) must be one of"):
        T.prepare(_cfg(tmp_path / "o", optimizer="lion"), progress=False)
    with pytest.raises(sllm.ConfigError, match="unknown key"):
        T.TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(sllm.ConfigError, match=r"batch_size \(--batch-size\) must be an integer in \[1, "):
        T.TrainConfig(batch_size=0)
    with pytest.raises(RunError, match="no such corpus file"):
        T.prepare(_cfg(tmp_path / "c", corpus=str(tmp_path / "missing.txt")), progress=False)
