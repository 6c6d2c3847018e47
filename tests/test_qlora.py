"""QLoRA: an adapter on a q8_0, q4_0 or q4_1 base gets the gradients the same adapter gets
on the float32 base those blocks stand for (the dequantized weights), on every backend,
GPT-2 and llama. The gradient reaches the adapters of lower layers through the frozen
quantized matmuls (matmul_q_bwd); the forward quantizes activations to q8_0 (matmul_q_fwd),
which is the only difference, so the gradients agree to about that rounding (measured,
as the norm of the difference over the norm of all adapter gradients: 0.2-1.4%), at least
5x closer than to the gradients on the float base the blocks were made from (1-67% away).
And from the command line: `sllm finetune` on a quantized model file."""
import json

import numpy as np
import pytest

import sllm
from sllm.layout import EMBEDDINGS
from sllm.lora import Adapter, LoraConfig

# |gradients on the quantized base - on the dequantized base| / |on the dequantized base|
TOLERANCE = 0.03


def tiny(arch):
    # K = 40 and 72: partial blocks along every reduction axis; 3 layers, so the first
    # layer's adapters see a gradient that crossed two frozen quantized layers
    return dict(vocab_size=37, embedding_dim=40, num_layers=3, num_heads=4, ffn_hidden_dim=72,
                max_seq_len=12, dropout=0.0, architecture=arch)


def dequantized_twin(quantized, arch, backend):
    """A float32 model holding exactly the values of `quantized`'s blocks."""
    twin = sllm.SLLM(tiny(arch), backend=backend, seed=1)
    params = twin.parameters()
    for name, p in quantized.parameters().items():
        params[name][...] = p
    for name, q in quantized.quantized_weights().items():
        rows = q.dequantize()
        params[name][...] = rows if name in EMBEDDINGS else rows.T  # matmuls: rows along K
    return twin


def adapter_gradients(model, tensors, x, y):
    """Loss and adapter gradients of `model` with an adapter holding `tensors`."""
    adapter = Adapter.create(model, LoraConfig(rank=4), seed=0)
    for name, t in adapter.tensors.items():
        t[...] = tensors[name]
    model.attach_adapter(adapter)
    loss = model.forward_backward(x, y)
    grads = {n: np.array(g) for n, g in model.gradients().items()}
    model.detach_adapter()
    return loss, grads


def distance(got, want):
    """|got - want| / |want| over every adapter tensor's gradient together."""
    names = sorted(want)
    diff = np.concatenate([(got[n] - want[n]).ravel() for n in names])
    return float(np.linalg.norm(diff) / np.linalg.norm(np.concatenate([want[n].ravel() for n in names])))


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adapter_gradients_on_a_quantized_base_equal_the_dequantized_base(arch, qtype,
                                                                          backend_name):
    original = sllm.SLLM(tiny(arch), backend=backend_name, seed=1)
    quantized = sllm.SLLM(tiny(arch), backend=backend_name, seed=1).quantize(qtype)
    twin = dequantized_twin(quantized, arch, backend_name)
    rng = np.random.default_rng(2)
    fresh = Adapter.create(original, LoraConfig(rank=4), seed=0)
    tensors = {n: rng.standard_normal(t.shape).astype(np.float32) * 0.2
               for n, t in fresh.tensors.items()}  # B != 0: every path carries gradient
    x, y = rng.integers(0, 37, (2, 11)), rng.integers(0, 37, (2, 11))
    loss_q, grads_q = adapter_gradients(quantized, tensors, x, y)
    loss_d, grads_d = adapter_gradients(twin, tensors, x, y)
    _, grads_o = adapter_gradients(original, tensors, x, y)
    assert set(grads_q) == set(tensors) and all(np.abs(g).max() > 0 for g in grads_q.values())
    assert loss_q == pytest.approx(loss_d, rel=1e-3)
    away = distance(grads_q, grads_d)
    assert away <= TOLERANCE, f"{qtype}: {away:.2%} away from the dequantized base's gradients"
    assert 5 * away < distance(grads_q, grads_o)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_finetune_on_a_quantized_model_file(tmp_path, qtype):
    """`sllm quantize`, then `sllm finetune` on the quantized file: the loss falls, the base
    file is untouched, and the adapter applies to that base (eval --adapter)."""
    from typer.testing import CliRunner

    from sllm.cli import app
    from sllm.corpus import write_corpus

    def run(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    corpus = write_corpus(tmp_path / "corpus.txt", 20_000, seed=1)
    (tmp_path / "model.json").write_text('{"vocabSize": 200, "embeddingDim": 40, "numLayers": 2, '
                                         '"numHeads": 2, "ffnHiddenDim": 72, "dropout": 0.0, '
                                         '"maxSeqLen": 16}')
    run("train", "--config", tmp_path / "model.json", "--corpus", corpus, "--steps", 3,
        "--batch-size", 2, "--out", tmp_path / "base", "--backend", "numpy", "-q")
    base = tmp_path / f"{qtype}.sllm"
    run("quantize", tmp_path / "base", "-t", qtype, "-o", base)
    before = base.read_bytes()
    run("finetune", base, "--corpus", corpus, "--out", tmp_path / "ft", "--steps", 12,
        "--batch-size", 4, "--lr", 3e-2, "--warmup", 0, "--lora-rank", 4, "-q")
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0]
    assert base.read_bytes() == before
    assert "perplexity" in run("eval", base, "--adapter", tmp_path / "ft" / "adapter.sllm",
                               "--corpus", corpus)
