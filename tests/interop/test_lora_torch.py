"""LoRA gradients against torch autograd (`make test-interop`).

The transformers twin of a random sllm model (test_torch_parity's mapping) gets a
hand-written LoRA: a forward hook on each target module adds s * (x @ A) @ B, with A and B
torch leaves holding the sllm adapter's values and the base's parameters frozen. llama's
fused qkv_proj adapter is q_proj, k_proj and v_proj sharing A, each with its column slice
of B (so torch sums A's three gradients, as sllm's one matmul does). On every backend
available here (numpy in the interop environment; tests/test_lora.py holds cpp, wasm and
wasm-simd to numpy's adapter gradients): the loss agrees within 1e-5 and each adapter
tensor's gradient within 1e-4 of its largest entry; the base gets no gradient in either.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_torch_parity import BACKENDS, batch, hf_model, sllm_model, torch_loss  # noqa: E402

from sllm.lora import Adapter, LoraConfig  # noqa: E402 - after pytest.importorskip

CASES = [("llama", 4, 2, False), ("llama", 4, 4, True), ("gpt2", 4, None, False),
         ("gpt2", 4, None, True)]


def adapter_for(model, targets):
    adapter = Adapter.create(model, LoraConfig(rank=3, alpha=5.0, targets=targets), seed=1)
    rng = np.random.default_rng(2)
    for t in adapter.tensors.values():
        t[...] = rng.standard_normal(t.shape).astype(np.float32) * 0.2
    return adapter


def _module_and_columns(hf, model, name):
    """The torch modules a sllm target weight stands for, each with its columns of B."""
    if model.config.architecture == "gpt2":
        return [(hf.get_submodule("transformer." + name[:-len(".weight")]), slice(None))]
    prefix = name[:-len(".weight")]
    if not prefix.endswith("qkv_proj"):
        return [(hf.get_submodule(prefix), slice(None))]
    cfg = model.config
    HD, KD = cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    base = prefix[:-len("qkv_proj")]
    return [(hf.get_submodule(base + "q_proj"), slice(0, HD)),
            (hf.get_submodule(base + "k_proj"), slice(HD, HD + KD)),
            (hf.get_submodule(base + "v_proj"), slice(HD + KD, None))]


def torch_lora(hf, model, adapter):
    """Hooks adding the adapter's delta; returns {sllm tensor name: torch leaf}."""
    leaves = {n: torch.tensor(t, requires_grad=True) for n, t in adapter.tensors.items()}
    s = adapter.scale
    for name in adapter.targets:
        A, B = leaves[name + ".lora_a"], leaves[name + ".lora_b"]
        for module, cols in _module_and_columns(hf, model, name):
            def hook(mod, inputs, out, A=A, B=B, cols=cols):
                return out + s * (inputs[0] @ A) @ B[:, cols]
            module.register_forward_hook(hook)
    return leaves


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("targets", ["all", "attn"])
@pytest.mark.parametrize("arch,H,Hkv,tie", CASES)
def test_adapter_gradients_equal_torch(arch, H, Hkv, tie, targets, backend):
    model = sllm_model(arch, H, Hkv, tie, backend)
    adapter = adapter_for(model, targets)
    hf, _ = hf_model(model)
    for p in hf.parameters():
        p.requires_grad_(False)  # the frozen base
    leaves = torch_lora(hf, model, adapter)
    model.attach_adapter(adapter)
    x, y = batch()
    loss = model.forward_backward(x, y)
    want = torch_loss(hf, x, y)
    want.backward()
    assert loss == pytest.approx(float(want.detach()), abs=1e-5)
    grads = model.gradients()
    assert set(grads) == set(leaves)
    for name, leaf in leaves.items():
        ref = leaf.grad.numpy()
        scale = float(np.abs(ref).max())
        assert scale > 0, name
        assert np.abs(grads[name] - ref).max() <= 1e-4 * scale, name
    assert all(p.grad is None for p in hf.parameters())
