"""LoRA adapters (sllm/lora.py): a fresh adapter leaves the logits unchanged, merge equals
attach, files round-trip and refuse another base, bad settings are refused by name, the
gradients match finite differences (and every backend matches numpy), and the base stays
frozen: no gradient, no optimizer state, unchanged weights after training steps.
(The gradients against a hand-written torch LoRA are tests/interop/test_lora_torch.py.)"""
import numpy as np
import pytest

import sllm
from sllm.backends.numpy_ref import NumpyBackend
from sllm.lora import Adapter, LoraConfig, fingerprint, lora_delta, merge, target_names
from sllm.optim import AdamW
from sllm.outputs import OutputError

ARCHS = ["gpt2", "llama"]


def tiny(arch, **changes):
    return {**dict(vocab_size=11, embedding_dim=16, num_layers=2, num_heads=4, ffn_hidden_dim=12,
                   max_seq_len=8, dropout=0.0, architecture=arch), **changes}


def model_and_adapter(arch, backend="numpy", rank=3, dropout=0.0, targets="all", seed=1):
    """A base and an adapter whose B is not zero (a fresh one's delta is exactly zero)."""
    model = sllm.SLLM(tiny(arch), backend=backend, seed=seed)
    adapter = Adapter.create(model, LoraConfig(rank=rank, dropout=dropout, targets=targets), 3)
    rng = np.random.default_rng(seed)
    for t in adapter.tensors.values():
        t[...] = rng.standard_normal(t.shape) * 0.3
    return model, adapter


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 11, (2, 7)), rng.integers(0, 11, (2, 7))
    y[0, :2] = -1
    return x, y


@pytest.mark.parametrize("arch", ARCHS)
def test_a_fresh_adapter_leaves_the_logits_exactly_unchanged(arch, backend_name):
    model = sllm.SLLM(tiny(arch), backend=backend_name, seed=2).eval()
    x, _ = batch()
    base = model.forward(x)
    model.attach_adapter(Adapter.create(model, LoraConfig(rank=4), seed=0))
    assert np.array_equal(model.forward(x), base)
    model.detach_adapter()
    assert np.array_equal(model.forward(x), base)


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_model_equals_base_plus_adapter(arch, backend_name):
    model, adapter = model_and_adapter(arch, backend_name)
    model.eval()
    x, _ = batch()
    base = model.forward(x)
    model.attach_adapter(adapter)
    attached = model.forward(x)
    assert np.abs(attached - base).max() > 0.05  # the adapter does something
    cache = model.new_cache(2)  # KV-cache decoding adds the delta too
    decoded = model.decode(x[:, :3], cache)
    np.testing.assert_allclose(decoded, attached[:, 2], atol=1e-5)
    model.detach_adapter()
    merged = merge(model, adapter).forward(x)
    np.testing.assert_allclose(merged, attached, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_file_round_trip_and_another_base_refused(arch, tmp_path):
    model, adapter = model_and_adapter(arch, dropout=0.1, targets="attn")
    path = tmp_path / "adapter.sllm"
    adapter.save(path)
    back = Adapter.load(path, model)
    assert back.config == adapter.config and back.targets == adapter.targets
    assert back.base["fingerprint"] == fingerprint(model)
    for name, t in adapter.tensors.items():
        assert np.array_equal(back.tensors[name], t)
    with pytest.raises(OutputError):
        adapter.save(path)  # no silent overwrite
    adapter.save(path, overwrite=True)
    other = sllm.SLLM(tiny(arch), backend="numpy", seed=7)
    with pytest.raises(sllm.LoraError) as e:
        Adapter.load(path, other)
    assert fingerprint(model)[:12] in str(e.value) and fingerprint(other)[:12] in str(e.value)
    with pytest.raises(sllm.LoraError):
        other.attach_adapter(back)
    with pytest.raises(sllm.FormatError):  # a model file is not an adapter
        model.save(tmp_path / "model.sllm")
        Adapter.load(tmp_path / "model.sllm")


def test_fingerprint_ignores_dropout_but_not_weights():
    model = sllm.SLLM(tiny("gpt2"), backend="numpy", seed=1)
    before = fingerprint(model)
    model.config = model.config.replace(dropout=0.2)  # a fine-tuning run's setting
    assert fingerprint(model) == before
    model.parameters()["ln_f.bias"][0] += 1e-3
    assert fingerprint(model) != before


@pytest.mark.parametrize("kwargs,words", [
    ({"rank": 0}, ["rank", "0"]), ({"rank": 2.5}, ["rank", "2.5"]),
    ({"alpha": 0}, ["alpha", "0"]), ({"alpha": -1.0}, ["alpha", "-1"]),
    ({"dropout": 1.0}, ["dropout", "1"]), ({"dropout": -0.1}, ["dropout", "-0.1"]),
    ({"targets": ""}, ["targets"]),
])
def test_bad_settings_are_refused_by_name(kwargs, words):
    with pytest.raises(sllm.ConfigError) as e:
        LoraConfig(**kwargs)
    message = str(e.value)
    assert all(w in message for w in words), message


def test_rank_wider_than_a_layer_and_unknown_targets_are_refused():
    model = sllm.SLLM(tiny("llama"), backend="numpy", seed=1)
    with pytest.raises(sllm.ConfigError, match=r"rank\) 13 must be between 1 and 12.*gate_proj"):
        Adapter.create(model, LoraConfig(rank=13, targets="mlp"))
    with pytest.raises(sllm.ConfigError, match=r"'c_fc'.*qkv_proj"):
        Adapter.create(model, LoraConfig(targets="attn,c_fc"))
    assert target_names(model.config, "attn") == [
        "model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.o_proj.weight",
        "model.layers.1.self_attn.qkv_proj.weight", "model.layers.1.self_attn.o_proj.weight"]
    gpt2 = sllm.SLLM(tiny("gpt2"), backend="numpy", seed=1)
    assert target_names(gpt2.config, "mlp.c_fc.weight") == ["h.0.mlp.c_fc.weight",
                                                            "h.1.mlp.c_fc.weight"]


def _loss_replaying_dropout(model, x, y):
    """The training-mode loss under the last forward's dropout masks (same seed)."""
    model.dropout_step -= 1
    acts = model._run_forward(x, grads=False)
    count = model._load_targets(acts, y)
    model.backend.softmax_xent(acts.losses, None, acts.logits, acts.targets, 1.0)
    return float(acts.losses.sum() / count)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_adapter_gradients_match_finite_differences(arch, dropout):
    model, adapter = model_and_adapter(arch, NumpyBackend(np.float64), dropout=dropout)
    model.attach_adapter(adapter)
    x, y = batch()
    model.forward_backward(x, y)
    grads = {n: g.copy() for n, g in model.gradients().items()}
    assert set(grads) == set(adapter.tensors)
    rng = np.random.default_rng(4)
    for name, t in adapter.tensors.items():  # every tensor: layer 0's gradient crosses
        for _ in range(3):                   # layer 1's frozen base
            idx = tuple(int(rng.integers(0, s)) for s in t.shape)
            old = t[idx]
            t[idx] = old + 1e-6
            up = _loss_replaying_dropout(model, x, y)
            t[idx] = old - 1e-6
            down = _loss_replaying_dropout(model, x, y)
            t[idx] = old
            fd = (up - down) / 2e-6
            assert abs(fd - grads[name][idx]) <= 1e-5 * (abs(fd) + 1e-3), (name, fd)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_backend_gives_numpys_adapter_gradients(arch, backend_name):
    ref, adapter = model_and_adapter(arch, "numpy", dropout=0.2)
    ref.attach_adapter(adapter)
    other, adapter2 = model_and_adapter(arch, backend_name, dropout=0.2)
    other.attach_adapter(adapter2)
    x, y = batch()
    assert other.forward_backward(x, y) == pytest.approx(ref.forward_backward(x, y), abs=1e-5)
    want, got = ref.gradients(), other.gradients()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=1e-3, err_msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_an_adapter_leaves_the_base_untouched(arch):
    model, adapter = model_and_adapter(arch)
    base = {n: p.copy() for n, p in model.parameters().items()}
    full_grads = model.flat_grads.size
    attached = model.attach_adapter(adapter)
    assert model.flat_grads.size < full_grads / 20  # the norms' scratch, not the base's
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
    detached = model.detach_adapter()
    assert detached is adapter and model.adapter is None
    assert model.flat_grads.size == full_grads  # full fine-tuning works again
    assert isinstance(adapter.tensors[next(iter(adapter.tensors))], np.ndarray)


def test_lora_delta_is_two_matmuls_and_a_scaled_add(backend_name):
    k = sllm.backends.get(backend_name)
    rng = np.random.default_rng(0)
    x, a, b = (rng.standard_normal(s).astype(np.float32) for s in ((5, 7), (7, 3), (3, 9)))
    out = rng.standard_normal((5, 9)).astype(np.float32)
    want = out + 0.5 * (x @ a) @ b
    lora_delta(k, out, x, a, b, 0.5)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_misuse_is_refused():
    model, adapter = model_and_adapter("gpt2")
    model.attach_adapter(adapter)
    with pytest.raises(sllm.LoraError, match="attached already"):
        model.attach_adapter(adapter)
    with pytest.raises(sllm.LoraError, match="detach"):
        merge(model, adapter)
    with pytest.raises(sllm.LoraError, match="detach"):
        model.quantize("q8_0")
    model.detach_adapter()
    assert model.detach_adapter() is None
    model.quantize("q8_0")
    with pytest.raises(sllm.LoraError, match="quantized"):
        merge(model, adapter)


@pytest.mark.parametrize("arch", ARCHS)
def test_an_adapter_trains_on_a_quantized_base(arch, backend_name):
    model = sllm.SLLM(tiny(arch, embedding_dim=32, ffn_hidden_dim=40), backend=backend_name,
                      seed=1).quantize("q8_0")
    adapter = Adapter.create(model, LoraConfig(rank=4), seed=0)
    rows = {n: np.array(q.data) for n, q in model.quantized_weights().items()}
    model.attach_adapter(adapter)
    opt = AdamW(model.trainable(), lr=2e-2)
    x, y = batch()
    first = model.forward_backward(x, y)
    for _ in range(6):
        model.forward_backward(x, y)
        opt.step()
    assert model.forward_backward(x, y) < first - 0.05
    for name, q in model.quantized_weights().items():
        assert np.array_equal(np.asarray(q.data), rows[name]), name


def test_an_f16_adapter_file_is_half_the_size_and_close(tmp_path):
    model, adapter = model_and_adapter("gpt2")
    adapter.save(tmp_path / "a32.sllm")
    adapter.save(tmp_path / "a16.sllm", dtype="f16")
    small, big = (tmp_path / "a16.sllm").stat().st_size, (tmp_path / "a32.sllm").stat().st_size
    assert small < big  # (tiny tensors: the 64-byte alignment hides most of the halving)
    back = Adapter.load(tmp_path / "a16.sllm", model)
    for name, t in adapter.tensors.items():
        assert back.tensors[name].dtype == np.float32
        np.testing.assert_allclose(back.tensors[name], t, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="f32 or f16"):
        adapter.save(tmp_path / "x.sllm", dtype="q8_0")
