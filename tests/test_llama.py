"""The llama family: gradients, KV-cache decoding, GQA cache size, quantization, files, a
short training run whose loss falls, and GPT-2 unchanged bit for bit by the family's arrival."""
import sys
from pathlib import Path

import numpy as np
import pytest

import sllm
from sllm.backends.numpy_ref import NumpyBackend
from sllm.optim import AdamW
from sllm.paths import CONFIG_DIR

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONFIGS = CONFIG_DIR  # the shipped configs (sllm/configs/)
TINY = dict(vocab_size=11, embedding_dim=16, num_layers=2, num_heads=4, ffn_hidden_dim=10,
            max_seq_len=8, dropout=0.0, architecture="llama")


def _perturbed(cfg, backend="numpy", seed=1):
    """A model whose norms are not all ones (so their gradients are not degenerate)."""
    model = sllm.SLLM(cfg, backend=backend, seed=seed)
    rng = np.random.default_rng(seed)
    for p in model.parameters().values():
        p[...] += rng.standard_normal(p.shape).astype(p.dtype) * 0.1
    return model


@pytest.mark.parametrize("kv,tie", [(4, False), (2, True), (1, False)])
def test_gradients_match_finite_differences(kv, tie):
    cfg = {**TINY, "num_kv_heads": kv, "tie_embeddings": tie}
    model = _perturbed(cfg, NumpyBackend(np.float64))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (2, 7)), rng.integers(0, 11, (2, 7))
    y[0, :2] = -1
    model.forward_backward(x, y)
    grads = {n: g.copy() for n, g in model.gradients().items()}
    for name, p in model.parameters().items():
        for _ in range(3):
            idx = tuple(int(rng.integers(0, s)) for s in p.shape)
            old = p[idx]
            p[idx] = old + 1e-6
            up = model.loss(x, y)
            p[idx] = old - 1e-6
            down = model.loss(x, y)
            p[idx] = old
            fd = (up - down) / 2e-6
            assert abs(fd - grads[name][idx]) <= 1e-5 * (abs(fd) + 1e-3), name


@pytest.mark.parametrize("backend", ["numpy", "cpp", "wasm"])
def test_decode_and_decode_batch_equal_the_forward(backend):
    if backend not in sllm.backends.available():
        pytest.skip(f"{backend} is not available here")
    model = _perturbed({**TINY, "num_kv_heads": 2}, backend).eval()
    x = np.random.default_rng(1).integers(0, 11, (1, 7))
    full = model.forward(x)[0]
    cache = model.new_cache(1)
    assert cache.k[0].shape == (1, 2, 8, 4)  # the cache holds the 2 KV heads, not 4
    rows = [model.decode(x[:, :4], cache)[0]] + [model.decode(x[:, t:t + 1], cache)[0]
                                                 for t in range(4, 7)]
    np.testing.assert_allclose(np.stack(rows), full[3:], rtol=1e-5, atol=1e-5)
    slots = model.new_cache(3)
    for s in range(3):
        model.decode(x[:, :3 + s], slots.slot(s))
    batch = model.decode_batch(x[0, 3:6], slots, [0, 1, 2], [3, 4, 5])
    np.testing.assert_allclose(batch, full[3:6], rtol=1e-5, atol=1e-5)


def test_layout_names_decay_and_init():
    model = sllm.SLLM({**TINY, "num_kv_heads": 2}, backend="numpy")
    params = model.parameters()
    assert params["model.layers.0.self_attn.qkv_proj.weight"].shape == (16, (4 + 2 * 2) * 4)
    assert params["model.embed_tokens.weight"].shape == (11, 16)
    assert not any(n.endswith(".bias") or "wpe" in n for n in params)
    # weight decay covers exactly the matrices: every norm weight lies past decay_count
    for name, slot in model.layout.slots.items():
        assert (slot.offset < model.layout.decay_count) == (len(slot.shape) == 2), name
    assert np.all(params["model.norm.weight"] == 1.0)
    o_std = params["model.layers.1.self_attn.o_proj.weight"].std()
    assert o_std < 0.8 * params["model.layers.1.mlp.up_proj.weight"].std()  # residual scaling
    assert model.num_parameters() == model.config.num_parameters()


def test_quantize_save_load_generate(tmp_path):
    model = _perturbed({**TINY, "num_kv_heads": 1}).eval()
    x = np.arange(8)[None] % 11
    ref = model.forward(x)
    model.quantize("q8_0")
    names = set(model.quantized_weights())
    assert names == set(sllm.quant.quantized_weight_names(model.config))
    assert "model.embed_tokens.weight" in names and len(names) == 2 * 5 + 2
    np.testing.assert_allclose(model.forward(x), ref, atol=0.05)
    path = tmp_path / "q.sllm"
    model.save(path)
    again = sllm.load(path, backend="numpy")
    assert again.config == model.config and again.qtype == "q8_0"
    np.testing.assert_array_equal(again.forward(x), model.forward(x))
    assert again.generate([1, 2], 4, temperature=0) == model.generate([1, 2], 4, temperature=0)


def test_baby_llama_loss_falls():
    cfg = sllm.ModelConfig.from_json(CONFIGS / "baby-llama.json").replace(num_layers=2,
                                                                           max_seq_len=32)
    model = sllm.SLLM(cfg, seed=0)
    text = np.frombuffer(b"to be or not to be, that is the question. " * 40, np.uint8) % 65
    opt = AdamW(model, lr=3e-3, weight_decay=0.1)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(30):
        starts = rng.integers(0, len(text) - 33, 8)
        batch = np.stack([text[s:s + 33] for s in starts]).astype(np.int64)
        losses.append(model.forward_backward(batch[:, :-1], batch[:, 1:]))
        opt.step()
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_gpt2_is_bit_identical_to_before_llama(tmp_path):
    """The file, logits, decoding, sampling, dropout training steps and AdamW of a GPT-2 model
    equal, bit for bit, what sllm computed before the llama family (fixtures/make_gpt2_fixture.py
    ran on commit fdc71e4)."""
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_gpt2_fixture as fx
    finally:
        sys.path.remove(str(FIXTURES))
    want = np.load(FIXTURES / "gpt2_before_llama.npz", allow_pickle=False)
    model = sllm.SLLM(fx.CONFIG, backend="numpy", seed=7)  # the same init
    stored = sllm.load(FIXTURES / "gpt2_before_llama.sllm", backend="numpy")
    for name, p in model.parameters().items():
        np.testing.assert_array_equal(p, stored.parameters()[name], err_msg=name)
    model.save(tmp_path / "again.sllm", metadata=fx.METADATA)  # the same bytes
    assert (tmp_path / "again.sllm").read_bytes() == (FIXTURES / "gpt2_before_llama.sllm").read_bytes()
    tokens, targets = want["tokens"], want["targets"]
    np.testing.assert_array_equal(stored.forward(tokens), want["logits"])
    cache = stored.new_cache(1)
    decode = np.stack([stored.decode(tokens[:1, :4], cache)[0]] +
                      [stored.decode(tokens[:1, t:t + 1], cache)[0] for t in range(4, 9)])
    np.testing.assert_array_equal(decode, want["decode"])
    assert stored.generate([1, 2, 3], 6, temperature=0) == want["greedy"].tolist()
    assert stored.generate([4, 5], 6, temperature=0.9, top_k=5, seed=3) == want["sampled"].tolist()
    model.train()
    opt = AdamW(model, lr=1e-2)
    for step in range(2):
        assert model.forward_backward(tokens, targets) == want["losses"][step]
        np.testing.assert_array_equal(model.flat_grads, want["grads"][step])
        opt.step()
    np.testing.assert_array_equal(model.flat_params, want["params"])


def test_hf_export_import_round_trip_and_refusals(tmp_path):
    import json

    from sllm.errors import ExportError
    from sllm.export import export_model, import_model
    model = _perturbed({**TINY, "num_kv_heads": 2, "rope_theta": 500000.0})
    export_model(model, "hf", tmp_path / "hf")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf["model_type"], hf["num_key_value_heads"], hf["rope_theta"]) == ("llama", 2, 5e5)
    back = import_model(tmp_path / "hf")
    assert back.config == model.config
    for name, p in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], p)
    for key, value in (("attention_bias", True), ("hidden_act", "gelu"),
                       ("rope_scaling", {"type": "linear", "factor": 2.0})):
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**hf, key: value}))
        with pytest.raises(ExportError, match=key):
            import_model(tmp_path / "hf")
