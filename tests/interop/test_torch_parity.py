"""Both model families against transformers + torch autograd (`make test-interop`).

A random sllm model (its norm weights perturbed, so that no gradient is trivially zero) is
mapped into transformers' LlamaForCausalLM (MHA, GQA, MQA; tied and untied) or
GPT2LMHeadModel; then, on every backend available here:
- logits agree within 1e-4 relative to the largest logit;
- the gradient of every parameter agrees with torch autograd's within 1e-4 of that
  tensor's largest gradient (loss: mean cross-entropy over targets != -1, as sllm's);
- three AdamW steps (weight decay on matrices only, as sllm) leave the same weights.
Skipped where torch or transformers is missing (the main test environment).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import sllm  # noqa: E402 - after pytest.importorskip
from sllm.optim import AdamW  # noqa: E402 - after pytest.importorskip

BACKENDS = sllm.backends.available()
V, C, L, F, T = 37, 32, 2, 48, 12
CASES = [  # (architecture, num_heads, num_kv_heads, tie)
    ("llama", 4, 4, False), ("llama", 4, 2, True), ("llama", 4, 1, False), ("llama", 8, 2, False),
    ("gpt2", 4, None, False), ("gpt2", 4, None, True)]


def sllm_model(arch, H, Hkv, tie, backend):
    cfg = sllm.ModelConfig(vocab_size=V, embedding_dim=C, num_layers=L, num_heads=H,
                           num_kv_heads=Hkv, ffn_hidden_dim=F, max_seq_len=T, dropout=0.0,
                           tie_embeddings=tie, architecture=arch,
                           **({"rope_theta": 5000.0} if arch == "llama" else {}))
    model = sllm.SLLM(cfg, backend=backend, seed=3)
    rng = np.random.default_rng(4)
    for p in model.parameters().values():
        if p.ndim == 1:  # norms around 1, biases around 0
            p[...] += rng.standard_normal(p.shape).astype(np.float32) * 0.2
    return model


# ---- the name mapping: sllm (in, out) matrices <-> torch (out, in) --------------------------
def llama_state(model):
    """sllm llama parameters as a LlamaForCausalLM state dict (q|k|v split, transposed)."""
    cfg, P = model.config, model.parameters()
    HD, KD = cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    state = {"model.embed_tokens.weight": P["model.embed_tokens.weight"],
             "model.norm.weight": P["model.norm.weight"]}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        qkv = P[p + "self_attn.qkv_proj.weight"]
        state.update({
            p + "self_attn.q_proj.weight": qkv[:, :HD].T, p + "self_attn.k_proj.weight":
            qkv[:, HD:HD + KD].T, p + "self_attn.v_proj.weight": qkv[:, HD + KD:].T})
        for name in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            state[p + name + ".weight"] = P[p + name + ".weight"].T
        for name in ("input_layernorm", "post_attention_layernorm"):
            state[p + name + ".weight"] = P[p + name + ".weight"]
    state["lm_head.weight"] = P["lm_head.weight"].T if "lm_head.weight" in P \
        else P["model.embed_tokens.weight"]
    return state


def llama_grads(model, hf):
    """torch's gradients in sllm's names and layout."""
    g = {n: p.grad.numpy() for n, p in hf.named_parameters()}
    out = {}
    for name in model.parameters():
        if name.endswith("qkv_proj.weight"):
            p = name[:-len("qkv_proj.weight")]
            out[name] = np.concatenate([g[p + s + "_proj.weight"].T for s in "qkv"], axis=1)
        elif name == "lm_head.weight" or (name.endswith("proj.weight")):
            out[name] = g[name].T
        else:
            out[name] = g[name]
    return out


def gpt2_state(model):
    """sllm GPT-2 parameters as a GPT2LMHeadModel state dict (its Conv1D is (in, out) too)."""
    P = model.parameters()
    state = {("transformer." + n if n not in ("wte", "wpe") else f"transformer.{n}.weight"): v
             for n, v in P.items() if n != "lm_head.weight"}
    state["lm_head.weight"] = P["lm_head.weight"].T if "lm_head.weight" in P else P["wte"]
    return state


def gpt2_grads(model, hf):
    g = {n: p.grad.numpy() for n, p in hf.named_parameters()}
    out = {}
    for name in model.parameters():
        if name == "lm_head.weight":
            out[name] = g[name].T
        elif name in ("wte", "wpe"):
            out[name] = g[f"transformer.{name}.weight"]
        else:
            out[name] = g["transformer." + name]
    return out


def hf_model(model):
    """The transformers twin of `model`, float32, eager attention, weights copied."""
    cfg = model.config
    if cfg.architecture == "llama":
        hc = transformers.LlamaConfig(
            vocab_size=V, hidden_size=C, intermediate_size=F, num_hidden_layers=L,
            num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.kv_heads,
            max_position_embeddings=T, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
            tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
            hidden_act="silu", attn_implementation="eager")
        hf, state, grads = transformers.LlamaForCausalLM(hc), llama_state(model), llama_grads
    else:
        hc = transformers.GPT2Config(
            vocab_size=V, n_embd=C, n_layer=L, n_head=cfg.num_heads, n_inner=F, n_positions=T,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=1e-5, tie_word_embeddings=cfg.tie_embeddings,
            attn_implementation="eager")
        hf, state, grads = transformers.GPT2LMHeadModel(hc), gpt2_state(model), gpt2_grads
    missing, unexpected = hf.load_state_dict(
        {k: torch.tensor(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)
    assert not unexpected and all(".attn.bias" in k or "masked_bias" in k for k in missing)
    return hf.float().train(), grads  # train(): no dropout anywhere (all rates are 0)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, V, (3, T)), rng.integers(0, V, (3, T))
    y[0, :3] = -1
    return x, y


def torch_loss(hf, x, y):
    logits = hf(torch.tensor(x)).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.tensor(y).reshape(-1),
                                             ignore_index=-1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch,H,Hkv,tie", CASES)
def test_logits_and_gradients_equal_torch(arch, H, Hkv, tie, backend):
    model = sllm_model(arch, H, Hkv, tie, backend)
    hf, grads_of = hf_model(model)
    x, y = batch()
    with torch.no_grad():
        want = hf(torch.tensor(x)).logits.numpy()
    got = model.eval().forward(x)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    loss = torch_loss(hf, x, y)
    loss.backward()
    assert model.train().forward_backward(x, y) == pytest.approx(loss.item(), rel=1e-5)
    want_g = grads_of(model, hf)
    for name, g in model.gradients().items():
        scale = np.abs(want_g[name]).max()
        assert scale > 0, name  # every parameter takes part
        assert np.abs(g - want_g[name]).max() <= 1e-4 * scale, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch,H,Hkv,tie", [CASES[1], CASES[2], CASES[5]])
def test_three_adamw_steps_equal_torch(arch, H, Hkv, tie, backend):
    model = sllm_model(arch, H, Hkv, tie, backend)
    hf, _ = hf_model(model)
    decay = [p for p in hf.parameters() if p.ndim >= 2]
    rest = [p for p in hf.parameters() if p.ndim < 2]
    opt_t = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                               {"params": rest, "weight_decay": 0.0}], lr=1e-2)
    opt_s = AdamW(model, lr=1e-2, weight_decay=0.1)
    for step in range(3):
        x, y = batch(step)
        opt_t.zero_grad()
        torch_loss(hf, x, y).backward()
        opt_t.step()
        model.forward_backward(x, y)
        opt_s.step()
    state = (llama_state if arch == "llama" else gpt2_state)(model)
    for name, p in hf.named_parameters():
        want = p.detach().numpy()
        assert np.abs(state[name] - want).max() <= 1e-4 * max(np.abs(want).max(), 1.0), name


@pytest.mark.parametrize("H,Hkv,tie", [(4, 2, False), (4, 1, True)])
def test_llama_export_loads_in_transformers_and_imports_back(tmp_path, H, Hkv, tie):
    from sllm.export import export_model, import_model
    model = sllm_model("llama", H, Hkv, tie, "numpy").eval()
    export_model(model, "hf", tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").float().eval()
    x, _ = batch()
    with torch.no_grad():
        want = hf(torch.tensor(x)).logits.numpy()
    assert np.abs(model.forward(x) - want).max() <= 1e-4 * np.abs(want).max()
    back = import_model(tmp_path / "hf")
    assert back.config == model.config.replace(dropout=0.0)
    for name, p in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], p)
