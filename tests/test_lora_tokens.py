"""Trainable token rows in LoRA adapters (sllm/lora_tokens.py, PEFT's
trainable_token_indices): a fresh adapter leaves the logits unchanged, the rows' gradients
match finite differences (embedding and head, tied or not), merge equals attach, the file
round-trips with f32 rows, bad ids are refused, and training moves only the rows."""
import numpy as np
import pytest

import sllm
from sllm.backends.numpy_ref import NumpyBackend
from sllm.errors import ConfigError, FormatError
from sllm.lora import Adapter, LoraConfig, merge
from sllm.lora_tokens import parse_option
from sllm.optim import AdamW

CASES = [("gpt2", True), ("gpt2", False), ("llama", True), ("llama", False)]
IDS = [9, 2, 5]


def tiny(arch, tie):
    return dict(vocab_size=11, embedding_dim=16, num_layers=2, num_heads=4, ffn_hidden_dim=12,
                max_seq_len=8, dropout=0.0, architecture=arch, tie_embeddings=tie)


def model_and_adapter(arch, tie, backend="numpy", seed=1):
    """A base and an adapter with rows for IDS, every tensor moved off its start."""
    model = sllm.SLLM(tiny(arch, tie), backend=backend, seed=seed)
    adapter = Adapter.create(model, LoraConfig(rank=2), 3, token_ids=IDS)
    rng = np.random.default_rng(seed)
    for t in adapter.tensors.values():
        t[...] += rng.standard_normal(t.shape) * 0.3
    return model, adapter


def batch():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (2, 7)), rng.integers(0, 11, (2, 7))
    x[0, :3], y[1, :3] = IDS, IDS  # every id as input and as target
    return x, y


@pytest.mark.parametrize("arch,tie", CASES)
def test_fresh_rows_leave_the_logits_unchanged_and_tensors_are_named(arch, tie):
    model = sllm.SLLM(tiny(arch, tie), seed=2).eval()
    x, _ = batch()
    base = model.forward(x)
    adapter = Adapter.create(model, LoraConfig(rank=2), 0, token_ids=IDS)
    rows = [n for n in adapter.tensors if n.endswith(".token_rows")]
    assert len(rows) == (1 if tie else 2)
    model.attach_adapter(adapter)
    np.testing.assert_allclose(model.forward(x), base, atol=1e-6)


@pytest.mark.parametrize("arch,tie", CASES)
def test_row_gradients_match_finite_differences(arch, tie):
    model, adapter = model_and_adapter(arch, tie, NumpyBackend(np.float64))
    model.attach_adapter(adapter)
    x, y = batch()
    model.forward_backward(x, y)
    grads = {n: g.copy() for n, g in model.gradients().items()}
    for name in (n for n in adapter.tensors if n.endswith(".token_rows")):
        t = adapter.tensors[name]
        for idx in [(0, 3), (1, 0), (2, 15)]:
            old = t[idx]
            t[idx] = old + 1e-6
            up = model.loss(x, y)
            t[idx] = old - 1e-6
            down = model.loss(x, y)
            t[idx] = old
            fd = (up - down) / 2e-6
            assert abs(fd) > 1e-6 and abs(fd - grads[name][idx]) <= 1e-5 * (abs(fd) + 1e-3), \
                (name, idx, fd, grads[name][idx])


@pytest.mark.parametrize("arch,tie", CASES)
def test_merge_equals_attached_and_the_file_round_trips(arch, tie, tmp_path):
    model, adapter = model_and_adapter(arch, tie)
    model.eval()
    x, _ = batch()
    adapter.save(tmp_path / "a.sllm", dtype="f16")
    loaded = Adapter.load(tmp_path / "a.sllm", model)
    assert loaded.token_ids == IDS
    for name in (n for n in adapter.tensors if n.endswith(".token_rows")):
        assert np.array_equal(loaded.tensors[name], adapter.tensors[name])  # rows stay f32
    model.attach_adapter(loaded)
    attached = model.forward(x)
    cache = model.new_cache(2)  # KV-cache decoding applies the rows too
    np.testing.assert_allclose(model.decode(x, cache), attached[:, -1], atol=1e-4)
    model.detach_adapter()
    np.testing.assert_allclose(merge(model, loaded).forward(x), attached, atol=1e-4)


def test_bad_token_ids_are_refused_by_name(tmp_path):
    model = sllm.SLLM(tiny("gpt2", True), seed=1)
    for ids, words in [([11], "[0, 11)"), ([3, 3], "listed twice"), ([-1], "[0, 11)")]:
        with pytest.raises(ConfigError, match=r"token id.*" + words.replace("[", r"\[")
                           .replace(")", r"\)")):
            Adapter.create(model, LoraConfig(rank=2), 0, token_ids=ids)
    assert parse_option("auto") == "auto" and parse_option("3, 4") == [3, 4]
    with pytest.raises(ConfigError, match="--lora-tokens"):
        parse_option("3,x")
    adapter = Adapter.create(model, LoraConfig(rank=2), 0, token_ids=[4])
    adapter.token_ids = [4, 40]
    adapter.save(tmp_path / "bad.sllm")
    with pytest.raises(FormatError, match="token_ids: token id 40"):
        Adapter.load(tmp_path / "bad.sllm")


@pytest.mark.parametrize("arch,tie", [("gpt2", True), ("llama", False)])
def test_training_moves_only_the_rows_and_the_base_stays_bit_unchanged(arch, tie):
    model, adapter = model_and_adapter(arch, tie)
    base = {n: p.copy() for n, p in model.parameters().items()}
    attached = model.attach_adapter(adapter)
    opt = AdamW(model.trainable(), lr=1e-2)
    assert all(b.size == attached.flat_params.size for b in opt.buffers.values())
    x, y = batch()
    first = model.forward_backward(x, y)
    for _ in range(5):
        model.forward_backward(x, y)
        opt.step()
    assert model.forward_backward(x, y) < first
    for name, p in model.parameters().items():
        assert np.array_equal(p, base[name]), name


def test_paths_that_cannot_apply_rows_refuse_them_in_one_line():
    from sllm.errors import ExportError
    from sllm.export_lora import gguf_lora_tensors
    from sllm.lora_bank import AdapterBank
    model, adapter = model_and_adapter("llama", False)
    with pytest.raises(ExportError, match="token rows exports to GGUF against its base"):
        gguf_lora_tensors(adapter)
    rows = gguf_lora_tensors(adapter, base=model)  # logits: tests/interop/test_lora_export.py
    assert rows["token_embd.weight.lora_a"].shape == (model.config.vocab_size, len(IDS))
    assert rows["output.weight.lora_b"].shape == (model.config.vocab_size, len(IDS))
    tied_model, tied = model_and_adapter("gpt2", True)
    with pytest.raises(ExportError, match="tied head.*merge it into its base"):
        gguf_lora_tensors(tied, base=tied_model)
    assert AdapterBank(model).add("tok", adapter).rows is not None  # served: test_serve_adapters
    with pytest.raises(ConfigError, match="float32 embedding"):
        Adapter.create(model.quantize("q8_0"), LoraConfig(rank=2), 0, token_ids=[1])
