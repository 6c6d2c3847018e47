"""The memory budget: configs that would exhaust memory are refused before anything large
is allocated, by every entry point. How fast a refusal is, is not asserted (a wall-clock
bound fails on a loaded machine for reasons that are not sllm's); what makes it fast is:
under 10 MB allocated before the refusal."""
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import sllm
from sllm import budget
from sllm import train as T
from sllm.budget import BudgetError

BASE = {"vocabSize": 100, "embeddingDim": 128, "numLayers": 1, "numHeads": 2,
        "ffnHiddenDim": 32, "dropout": 0.0, "maxSeqLen": 16}
# The configs of the issue; each needs at least 100 GB.
HUGE = [{"maxSeqLen": 10**8}, {"vocabSize": 10**9}, {"embeddingDim": 10**6, "numHeads": 1},
        {"numLayers": 10**6}, {"ffnHiddenDim": 10**9}]
SLLM_BIN = str(Path(sys.executable).parent / "sllm")


@pytest.fixture(autouse=True)
def _limit():
    """A fixed budget, so that what is refused does not depend on this machine's memory."""
    budget.set_limit("16G")
    yield
    budget.set_limit(None)


def _refused_fast(fn):
    """fn() raises BudgetError with under 10 MB allocated; returns the message."""
    tracemalloc.start()
    try:
        with pytest.raises(BudgetError) as info:
            fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 10 << 20, peak
    return str(info.value)


@pytest.mark.parametrize("change", HUGE, ids=lambda c: "-".join(c))
def test_huge_model_configs_refused_before_allocating(change):
    cfg = {**BASE, **change}
    msg = _refused_fast(lambda: sllm.SLLM(cfg, backend="numpy"))
    assert "needs" in msg and "the budget is" in msg


@pytest.mark.parametrize("change", [c for c in HUGE if "vocabSize" not in c],
                         ids=lambda c: "-".join(c))  # training takes the tokenizer's vocab
def test_huge_training_configs_refused_before_reading_the_corpus(tmp_path, change):
    cfg = T.TrainConfig(model={**BASE, **change}, vocab_size=100, steps=1, batch_size=2,
                        backend="numpy", out=str(tmp_path))
    msg = _refused_fast(lambda: T.prepare(cfg, progress=False))
    assert "use a smaller config" in msg and "optimizer state" in msg
    assert not (tmp_path / "run.lock").exists()
    cfg.out = str(tmp_path / "new")
    with pytest.raises(BudgetError):
        T.prepare(cfg, progress=False)
    assert not (tmp_path / "new").exists()  # no empty run directory left behind


def test_huge_model_refused_by_the_machines_own_budget():
    budget.set_limit(None)
    msg = _refused_fast(lambda: sllm.SLLM({**BASE, "maxSeqLen": 10**10}, backend="numpy"))
    assert "of the available memory" in msg or "cgroup" in msg


def test_huge_batch_refused_with_the_largest_that_fits(tmp_path, backend_name):
    budget.set_limit("2G")
    model = sllm.SLLM({**BASE, "maxSeqLen": 256}, backend=backend_name)
    tokens = np.zeros((50_000, 256), dtype=np.int64)
    msg = _refused_fast(lambda: model.forward_backward(tokens, tokens))
    assert "a batch of 50000 x 256" in msg and "the largest batch that fits is" in msg


def test_max_memory_sets_the_budget(tmp_path):
    cfg = T.TrainConfig(model={**BASE, "maxSeqLen": 256}, vocab_size=100, steps=1,
                        batch_size=4096, seq_len=256, backend="numpy", out=str(tmp_path),
                        max_memory="1G")
    msg = _refused_fast(lambda: T.prepare(cfg, progress=False))
    assert "the budget is 1.0 GiB (--max-memory)" in msg
    assert budget.available()[0] == 16 << 30  # the run's budget does not outlive the call
    largest = int(msg.split("the largest --batch-size that fits is ")[1].split(".")[0])
    assert 0 < largest < 4096
    est = budget.train_estimate(T._model_config(cfg, 4, warn=False), largest, 256,
                                sllm.backends.get("numpy"), "adamw", cfg.demo_chars,
                                cfg.eval_batches)  # prepare() counts the validation batches
    assert est.total <= 1 << 30 < est.total + est.per_row  # it is the largest


def test_estimate_covers_what_the_model_allocates():
    """The activation estimate is not below what Activations really holds."""
    from sllm.activations import Activations
    cfg = sllm.ModelConfig(**{"vocab_size": 50, "embedding_dim": 16, "num_layers": 2,
                              "num_heads": 2, "ffn_hidden_dim": 24, "max_seq_len": 8})
    backend = sllm.backends.get("numpy")
    for recompute in (False, True):
        acts = Activations(backend, cfg, 3, 8, True, recompute)
        held = sum(a.nbytes for a in acts._owned)
        est = budget.activation_estimate(cfg, 3, 8, backend, True, recompute).parts["activations"]
        assert held <= est <= held * 1.5, recompute
    model = budget.model_estimate(cfg)
    assert model.parts["parameters"] == cfg.num_parameters() * 4


def test_parse_size():
    assert budget.parse_size("512M") == 512 << 20 and budget.parse_size("1.5GiB") == 3 << 29
    assert budget.parse_size(1000) == 1000
    for bad in ("lots", "-1G", 0, True, "1X"):
        with pytest.raises(sllm.ConfigError, match=r"max_memory \(--max-memory\) must be a size"):
            budget.parse_size(bad)


def test_forged_json_vocab_size_is_a_format_error(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": "sllm-json", "config": {**BASE, "vocabSize": 10**9},
                                "weights": {}}))
    with pytest.raises(sllm.FormatError, match="the config needs"):
        sllm.load_json(path)


def test_info_on_a_device_fails_fast():
    """/dev/zero is endless: info refuses it from its first bytes (the timeout only keeps a
    regression from hanging the suite)."""
    done = subprocess.run([SLLM_BIN, "info", "/dev/zero"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "not an SLLM model file" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_refuses_an_oom_config_in_one_line(tmp_path):
    (tmp_path / "big.json").write_text(json.dumps({**BASE, "maxSeqLen": 10**8}))
    done = subprocess.run([SLLM_BIN, "train", "--config", str(tmp_path / "big.json"),
                           "--steps", "1", "--out", str(tmp_path / "r"), "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("error: training") and "needs about" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_lora_run_is_counted_as_it_allocates(tmp_path, backend_name):
    """A LoRA run counts its frozen base as stored (q4_0 rows here), the adapter with its
    gradients and AdamW state, and the activations of --recompute: a budget that refuses
    full fine-tuning of the float32 model fits it, and the estimate is not below what
    its buffers really hold after a step."""
    from sllm.lora import LoraConfig, frozen_base
    from sllm.tokenizer import train as train_tokenizer
    text = "the pirate sails the sea and the parrot sings . " * 100
    (tmp_path / "text.txt").write_text(text)
    tok = train_tokenizer("char", text, None)
    model = sllm.SLLM({"vocabSize": tok.vocab_size, "embeddingDim": 256, "numLayers": 4,
                       "numHeads": 4, "ffnHiddenDim": 1024, "maxSeqLen": 32}, backend="numpy")
    model.tokenizer = tok.to_dict()
    model.save(tmp_path / "f32.sllm")
    model.quantize("q4_0").save(tmp_path / "q4_0.sllm")
    backend = sllm.backends.get(backend_name)
    q4 = sllm.load(tmp_path / "q4_0.sllm", backend=backend_name)
    frozen = frozen_base(q4, LoraConfig(rank=4))
    assert frozen.adapter_parameters == 4 * 4 * (256 + 768 + 256 + 256 + 256 + 1024 + 1024 + 256)
    lora = budget.train_estimate(model.config, 4, 32, backend, recompute=True, frozen=frozen)
    full = budget.train_estimate(model.config, 4, 32, backend)
    assert lora.parts["optimizer state"] == 2 * 4 * frozen.adapter_parameters
    assert lora.parts["frozen base"] < model.num_parameters() * 4 / 6  # 4.5 bits a weight
    middle = (lora.total + full.total) // 2 + 4 * len(text) * budget.CORPUS_FACTOR
    same = dict(corpus=str(tmp_path / "text.txt"), steps=1, batch_size=4, seq_len=32,
                backend=backend_name, max_memory=str(middle), eval_batches=1)
    with pytest.raises(BudgetError, match="optimizer state"):
        T.prepare(T.TrainConfig(init_from=str(tmp_path / "f32.sllm"), out=str(tmp_path / "full"),
                                **same), progress=False)
    trainer = T.prepare(T.TrainConfig(init_from=str(tmp_path / "q4_0.sllm"), lora_rank=4,
                                      recompute=True, out=str(tmp_path / "lora"), **same),
                        progress=False)
    trainer.run()
    m = trainer.model
    assert len(m._acts) == 1  # evaluation ran in the training buffers
    held = [m.flat_params, m.flat_grads, m.adapter.flat_params, m.adapter.flat_grads,
            *m.adapter._work.values(), *trainer.opt.buffers.values(),
            *(a for acts in m._acts.values() for a in acts._owned)]
    stored = sum(q.nbytes for q in m.quantized_weights().values())
    assert stored + sum(a.nbytes for a in held) <= lora.total - lora.parts["runtime"]


def test_a_small_allocation_skips_the_machines_memory_but_not_a_set_limit(monkeypatch):
    """A decode's KV cache of a small model is made per generate call: it reads no
    /proc/meminfo (60 us), but --max-memory still refuses it."""
    budget.set_limit(None)
    monkeypatch.delenv("SLLM_MAX_MEMORY", raising=False)
    monkeypatch.setattr(budget, "_machine_available", lambda: (0, "no memory at all"))
    budget.check_bytes(budget.SMALL, "a small cache")  # not refused: nothing read
    with pytest.raises(BudgetError, match="no memory at all"):
        budget.check_bytes(budget.SMALL + 1, "a larger cache")
    budget.set_limit(1000)
    with pytest.raises(BudgetError, match="--max-memory"):
        budget.check_bytes(2000, "a small cache")
