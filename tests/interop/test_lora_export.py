"""LoRA adapters exported by sllm, run by the other runtimes (`make test-interop`).

A random base (GPT-2; llama with grouped-query attention) and a random adapter whose B is
not zero (a fresh adapter changes nothing and would prove nothing): the base goes out as
`sllm export --to hf` / `--to gguf`, the adapter as `--to peft` / `--to gguf`, and

- peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
  gives sllm's base+adapter logits within 1e-4;
- llama-cpp-python with `lora_path` on the base GGUF, given sllm's token ids, gives them
  within 1e-3. The KV cache is f32 here: llama.cpp's default f16 cache rounds the keys and
  values the adapter changes (its own rounding, ~6e-4 on the llama case, not the adapter's).
  An f16 adapter file is compared with sllm's logits with the adapter rounded to f16,
  within 1e-2 as test_llama_cpp's f16 bases: llama.cpp rounds the activations to f16
  for an f16 matmul (measured 1.3e-3).

Each case also checks the adapter moved the logits far more than the tolerance.
"""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import sllm  # noqa: E402 - after pytest.importorskip
from sllm import tokenizer as tokenizers  # noqa: E402 - after pytest.importorskip
from sllm.corpus import generate_corpus  # noqa: E402 - after pytest.importorskip
from sllm.export import export_adapter, export_model  # noqa: E402 - after pytest.importorskip
from sllm.lora import Adapter, LoraConfig  # noqa: E402 - after pytest.importorskip

# (architecture, kv heads of 4, targets)
CASES = [("gpt2", None, "all"), ("llama", 2, "all"), ("llama", 1, "attn")]
GGML_F32 = 0  # ggml_type for llama.cpp's KV cache


@pytest.fixture(scope="module")
def text():
    return generate_corpus(20_000, seed=7)


def base_and_adapter(arch, kv, targets, text, tokens=0, tie=False):
    """A random base, an adapter on it with random B (and `tokens` trainable token rows,
    random, for ids the text holds), the text's ids."""
    tok = tokenizers.train("char", text, None)
    extra = {"architecture": "llama", "num_kv_heads": kv, "rope_theta": 5000.0} \
        if arch == "llama" else {}
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=64, num_layers=2,
                           num_heads=4, ffn_hidden_dim=128, max_seq_len=96, dropout=0.0,
                           tie_embeddings=tie, **extra)
    model = sllm.SLLM(cfg, backend="numpy", seed=3)
    model.tokenizer = tok.to_dict()
    ids = tok.encode(text[:90])
    adapter = Adapter.create(model, LoraConfig(rank=4, alpha=6.0, targets=targets), seed=2,
                             token_ids=sorted(set(ids))[:tokens])
    rng = np.random.default_rng(5)
    for name, t in adapter.tensors.items():
        if name.endswith(".lora_b"):
            t[...] = rng.normal(0.0, 0.3, t.shape)
        elif name.endswith(".token_rows"):  # the base's rows' scale, as training moves them
            t[...] += rng.normal(0.0, 0.05, t.shape)
    return model.eval(), adapter, ids


def sllm_logits(model, adapter, ids):
    """(base logits, base+adapter logits) of sllm."""
    base = model.forward([ids])[0].copy()
    model.attach_adapter(adapter)
    adapted = model.forward([ids])[0].copy()
    model.detach_adapter()
    return base, adapted


@pytest.mark.parametrize("arch,kv,targets,tokens,tie", [(*c, 0, False) for c in CASES]
                         + [("gpt2", None, "attn", 5, True), ("gpt2", None, "mlp", 5, False),
                            ("llama", 2, "mlp", 5, False)])
def test_peft_gives_sllm_adapter_logits(tmp_path, text, arch, kv, targets, tokens, tie):
    """With token rows too: PEFT's trainable_token_indices (a tied head following wte, an
    untied lm_head's own rows)."""
    model, adapter, ids = base_and_adapter(arch, kv, targets, text, tokens, tie)
    base, want = sllm_logits(model, adapter, ids)
    export_model(model, "hf", tmp_path / "base")
    export_adapter(adapter, "peft", tmp_path / "adapter", base_name="base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' own deprecation notes
        peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = peft_model(torch.tensor([ids])).logits[0].numpy()
    diff, moved = np.abs(got - want).max(), np.abs(want - base).max()
    print(f"peft {arch} kv={kv} {targets} rows={tokens} tied={tie}: max |logits diff| {diff:.2e} (adapter moved the "
          f"logits by {moved:.2f})")
    assert moved > 0.1
    assert diff <= 1e-4


@pytest.mark.parametrize("arch,kv,targets,dtype,tokens", [(*c, "f32", 0) for c in CASES]
                         + [("llama", 2, "all", "f16", 0), ("llama", 2, "attn", "f32", 5)])
def test_llama_cpp_gives_sllm_adapter_logits(tmp_path, text, arch, kv, targets, dtype, tokens):
    """With untied token rows too: exact rank-n LoRAs of token_embd and output."""
    llama_cpp = pytest.importorskip("llama_cpp")
    model, adapter, ids = base_and_adapter(arch, kv, targets, text, tokens)
    if dtype == "f16":  # sllm's reference: the adapter as the file rounds it
        for t in adapter.tensors.values():
            t[...] = t.astype(np.float16)
    base, want = sllm_logits(model, adapter, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # how llama.cpp's tokenizer differs: not used here
        export_model(model, "gguf", tmp_path / "base.gguf")
    export_adapter(adapter, "gguf", tmp_path / "adapter.gguf", dtype, base=model)

    def logits(**lora):
        llm = llama_cpp.Llama(model_path=str(tmp_path / "base.gguf"), n_ctx=96, n_batch=96,
                              logits_all=True, verbose=False, n_threads=2, type_k=GGML_F32,
                              type_v=GGML_F32, **lora)
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float32)

    got = logits(lora_path=str(tmp_path / "adapter.gguf"))
    diff, moved = np.abs(got - want).max(), np.abs(want - base).max()
    print(f"llama.cpp {arch} kv={kv} {targets} {dtype} rows={tokens}: max |logits diff| {diff:.2e} (adapter moved "
          f"the logits by {moved:.2f}; the base alone: {np.abs(logits() - base).max():.2e})")
    assert moved > 0.1
    assert diff <= (1e-3 if dtype == "f32" else 1e-2)
