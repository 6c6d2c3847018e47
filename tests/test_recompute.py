"""Activation checkpointing (SLLM.recompute): backward recomputes each layer's forward from
its saved input, so the loss and every gradient are those of the plain step, bit for bit
(the kernels are deterministic and the dropout masks are counter-based), for full training
and for a LoRA adapter on a quantized base, GPT-2 and llama, on every backend; the training
buffers shrink to one layer's plus each layer's output. The logits are made a slice of
rows at a time: with several slices, the head's gradient is a sum over them, equal to the
plain step's within float32 rounding."""
import json

import numpy as np
import pytest

import sllm
from sllm.lora import Adapter, LoraConfig

LAYERS = 4


def tiny(arch):
    return dict(vocab_size=29, embedding_dim=40, num_layers=LAYERS, num_heads=4,
                ffn_hidden_dim=72, max_seq_len=12, dropout=0.1, architecture=arch)


def steps(model, batches):
    """Loss and gradients of each forward_backward (the dropout masks change per step)."""
    out = []
    for x, y in batches:
        loss = model.forward_backward(x, y)
        out.append((loss, {n: np.array(g) for n, g in model.gradients().items()}))
    return out


def batches():
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 29, (2, 11)), rng.integers(0, 29, (2, 11))) for _ in range(2)]


def run(arch, backend, recompute, qlora, lora_dropout=0.1, targets="all"):
    model = sllm.SLLM(tiny(arch), backend=backend, seed=1)
    if qlora:
        model.quantize("q4_0")
        adapter = Adapter.create(model, LoraConfig(rank=4, dropout=lora_dropout, targets=targets),
                                 seed=0)
        for t in adapter.tensors.values():
            t[...] = np.random.default_rng(3).standard_normal(t.shape) * 0.2
        model.attach_adapter(adapter)
    model.recompute = recompute
    return steps(model.train(), batches()), model


@pytest.mark.parametrize("qlora", [False, True], ids=["full", "qlora"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_recomputed_steps_equal_the_plain_ones(arch, qlora, backend_name):
    plain, _ = run(arch, backend_name, False, qlora)
    again, model = run(arch, backend_name, True, qlora)
    for (loss, grads), (loss2, grads2) in zip(plain, again, strict=True):
        assert loss2 == loss
        assert set(grads2) == set(grads)
        for name in grads:
            np.testing.assert_array_equal(grads2[name], grads[name], err_msg=name)
    acts = next(a for a in model._acts.values() if a.has_grads)
    assert acts.recompute
    layers = acts.layers
    assert all(la.ln1 is layers[0].ln1 for la in layers)  # one set of buffers...
    assert len({id(la.res3) for la in layers}) == LAYERS  # ...and each layer's output


@pytest.mark.parametrize("qlora", [False, True], ids=["full", "qlora"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_logits_in_slices_of_rows_give_the_same_step(arch, qlora, backend_name, monkeypatch):
    monkeypatch.setattr(sllm.activations, "HEAD_ROWS", 5)  # 22 rows: slices of 5, 5, 5, 5, 2
    plain, _ = run(arch, backend_name, False, qlora)
    again, model = run(arch, backend_name, True, qlora)
    assert next(a for a in model._acts.values() if a.has_grads).logits.shape[0] == 5
    for (loss, grads), (loss2, grads2) in zip(plain, again, strict=True):
        assert loss2 == pytest.approx(loss, rel=1e-6)
        for name in grads:
            scale = float(np.abs(grads[name]).max())
            np.testing.assert_allclose(grads2[name], grads[name], rtol=0, atol=1e-5 * scale,
                                       err_msg=name)


@pytest.mark.parametrize("targets", ["all", "attn"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adapter_in_blocks_of_rows_gives_the_same_step(arch, targets, backend_name, monkeypatch):
    """The adapter's matmuls run LORA_ROWS rows at a time (a small scratch), and under
    recompute a frozen base's MLP activation shares memory with its gradient (each block of
    rows read before its gradient is written; an untargeted frozen weight never reads it):
    recomputing steps stay bit for bit the plain ones, and both equal one block of all rows
    within rounding (dA and dB are sums over the blocks)."""
    whole = run(arch, backend_name, False, True, 0.0, targets)[0]
    monkeypatch.setattr(sllm.lora, "LORA_ROWS", 5)  # 22 rows: blocks of 5, 5, 5, 5, 2
    plain = run(arch, backend_name, False, True, 0.0, targets)[0]
    again, model = run(arch, backend_name, True, True, 0.0, targets)
    if arch == "gpt2":
        acts = next(a for a in model._acts.values() if a.has_grads)
        assert acts.layers[0].fch_act is acts.dfch
    for (loss, grads), (loss2, grads2), (loss1, grads1) in zip(plain, again, whole, strict=True):
        assert loss2 == loss == pytest.approx(loss1, rel=1e-6)
        for name in grads:
            np.testing.assert_array_equal(grads2[name], grads[name], err_msg=name)
            scale = float(np.abs(grads1[name]).max())
            np.testing.assert_allclose(grads[name], grads1[name], rtol=0, atol=1e-4 * scale,
                                       err_msg=name)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_recompute_keeps_one_layer_of_training_buffers(arch):
    sizes = {}
    for recompute in (False, True):
        model = sllm.SLLM(tiny(arch), backend="numpy", seed=1)
        model.recompute = recompute
        x, y = batches()[0]
        model.forward_backward(x, y)
        acts = next(a for a in model._acts.values() if a.has_grads)
        sizes[recompute] = sum(a.nbytes for a in acts._owned)
        model.eval()
        logits = model.forward(x)  # evaluation keeps its own buffers, unaffected
        assert np.isfinite(logits).all()
    assert sizes[True] < 0.6 * sizes[False]


def test_finetune_recompute_writes_the_same_adapter(tmp_path, monkeypatch):
    """`sllm finetune --recompute` (a training option, on `sllm train` too): the same run."""
    from typer.testing import CliRunner

    from sllm.activations import Activations
    from sllm.cli import app
    from sllm.corpus import write_corpus
    made = []
    init = Activations.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self.recompute)

    monkeypatch.setattr(Activations, "__init__", recording)

    def run(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output

    corpus = write_corpus(tmp_path / "corpus.txt", 20_000, seed=1)
    (tmp_path / "model.json").write_text('{"vocabSize": 200, "embeddingDim": 32, "numLayers": 3, '
                                         '"numHeads": 2, "ffnHiddenDim": 48, "dropout": 0.1, '
                                         '"maxSeqLen": 16}')
    run("train", "--config", tmp_path / "model.json", "--corpus", corpus, "--steps", 3,
        "--batch-size", 2, "--out", tmp_path / "base", "--backend", "numpy", "-q")
    for out, more in (("plain", []), ("recompute", ["--recompute"])):
        made.clear()
        run("finetune", tmp_path / "base", "--corpus", corpus, "--out", tmp_path / out,
            "--steps", 4, "--batch-size", 2, "--lora-rank", 2, "--lora-dropout", 0.1,
            "--backend", "numpy", "-q", *more)
        assert any(made) == bool(more)  # the training buffers were made for recompute
    saved = json.loads((tmp_path / "recompute" / "train_config.json").read_text())
    assert saved["recompute"] is True
    assert (tmp_path / "plain" / "adapter.sllm").read_bytes() == \
        (tmp_path / "recompute" / "adapter.sllm").read_bytes()


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_evaluation_runs_in_the_training_buffers(arch, recompute, backend_name, monkeypatch):
    """SLLM.loss during training (the same batch shape) runs in the training step's buffers
    (under recompute the logits a slice of rows at a time) and gives the loss of a model
    that never trained: no second set of activations for evaluation."""
    monkeypatch.setattr(sllm.activations, "HEAD_ROWS", 5)
    (x, y), model = batches()[0], sllm.SLLM(tiny(arch), backend=backend_name, seed=1)
    want = model.eval().loss(x, y)
    model = sllm.SLLM(tiny(arch), backend=backend_name, seed=1)
    model.recompute = recompute
    model.train().forward_backward(x, y)  # gradients only: the weights stay
    held = dict(model._acts)
    assert model.eval().loss(x, y) == pytest.approx(want, rel=1e-6)
    assert model._acts == held
