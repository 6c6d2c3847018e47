"""LoRA adapters exported for other runtimes (sllm.export_lora): PEFT and llama.cpp's LoRA GGUF.

Without torch or llama.cpp (tests/interop/test_lora_export.py runs those): each exported
factor pair must be exactly the change the adapter makes to that runtime's weight. The
merged model (sllm.lora.merge) exported the same way is the reference: for every adapted
tensor, merged export == base export + s * (lora_B @ lora_A) (PEFT's layouts) or
s * (lora_b @ lora_a) (GGUF's, llama's q and k rows permuted). Then the file structure
(names, shapes, metadata, f16) and the CLI: `sllm export ADAPTER --to peft|gguf --base
BASE -o OUT`, its one-line refusals, and check_output.
"""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import sllm
from sllm.cli import app
from sllm.errors import ExportError
from sllm.export import export_model
from sllm.export_lora import export_lora_gguf, export_peft, gguf_lora_tensors, peft_config, peft_tensors
from sllm.hf import hf_tensors
from sllm.hf_llama import llama_hf_tensors
from sllm.lora import Adapter, LoraConfig, merge

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

runner = CliRunner()
SHAPES = {"gpt2": {}, "llama": {"architecture": "llama", "num_kv_heads": 2, "rope_theta": 5000.0}}


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def base_model(arch, seed=3):
    cfg = sllm.ModelConfig(vocab_size=40, embedding_dim=32, num_layers=2, num_heads=4,
                           ffn_hidden_dim=48, max_seq_len=16, dropout=0.0, **SHAPES[arch])
    return sllm.SLLM(cfg, backend="numpy", seed=seed).eval()


def trained_adapter(model, targets="all", rank=3, alpha=5.0):
    """An adapter whose B is not zero (a fresh one changes nothing: it would prove nothing)."""
    adapter = Adapter.create(model, LoraConfig(rank=rank, alpha=alpha, targets=targets), seed=1)
    rng = np.random.default_rng(2)
    for name, t in adapter.tensors.items():
        if name.endswith(".lora_b"):
            t[...] = rng.normal(0.0, 0.3, t.shape)
    return adapter


def merged(model, adapter):
    copy = base_model(model.config.architecture)
    assert all(np.array_equal(p, model.parameters()[n]) for n, p in copy.parameters().items())
    return merge(copy, adapter)


def hf_weights(model):
    if model.config.architecture == "llama":
        return llama_hf_tensors(model, np.float32)
    return {k: v.astype(np.float64) for k, v in hf_tensors(model).items()}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("targets", ["all", "attn"])
def test_peft_factors_are_exactly_the_merged_change(arch, targets):
    model = base_model(arch)
    adapter = trained_adapter(model, targets)
    before, after = hf_weights(model), hf_weights(merged(model, adapter))
    tensors = peft_tensors(adapter)
    s = adapter.config.alpha / adapter.config.rank
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    seen = set()
    for key in tensors:
        if not key.endswith(".lora_A.weight"):
            continue
        weight = key[len("base_model.model."):-len(".lora_A.weight")] + ".weight"
        a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
        assert a.shape[0] == b.shape[1] == 3 and a.dtype == b.dtype == np.float32
        delta = s * (b.astype(np.float64) @ a)  # (out, in), nn.Linear's
        if arch == "gpt2":
            delta = delta.T  # Conv1D keeps (in, out): PEFT's fan_in_fan_out
        np.testing.assert_allclose(after[weight] - before[weight], delta, atol=2e-6)
        seen.add(weight)
    per_layer = {("gpt2", "all"): 4, ("gpt2", "attn"): 2, ("llama", "all"): 7,
                 ("llama", "attn"): 4}[arch, targets]  # llama's q, k, v apart
    assert seen == changed and len(seen) == 2 * per_layer


def test_llama_qkv_adapter_becomes_three_sharing_a():
    model = base_model("llama")
    adapter = trained_adapter(model, "self_attn.qkv_proj.weight")
    tensors = peft_tensors(adapter)
    pre = "base_model.model.model.layers.1.self_attn."
    a = tensors[pre + "q_proj.lora_A.weight"]
    assert np.array_equal(a, tensors[pre + "k_proj.lora_A.weight"])
    assert np.array_equal(a, tensors[pre + "v_proj.lora_A.weight"])
    assert [tensors[pre + f"{p}_proj.lora_B.weight"].shape for p in "qkv"] == [(32, 3), (16, 3),
                                                                               (16, 3)]
    fused = adapter.tensors["model.layers.1.self_attn.qkv_proj.weight.lora_b"]
    np.testing.assert_array_equal(
        np.concatenate([tensors[pre + f"{p}_proj.lora_B.weight"] for p in "qkv"]), fused.T)
    cfg = peft_config(adapter)
    assert cfg["target_modules"] == ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"]
    assert cfg["fan_in_fan_out"] is False


def test_peft_config_names_gpt2_modules_apart():
    model = base_model("gpt2")
    cfg = peft_config(trained_adapter(model, "attn"), "base")
    assert cfg["target_modules"] == ["attn.c_attn", "attn.c_proj"]  # not mlp.c_proj too
    assert (cfg["peft_type"], cfg["task_type"], cfg["r"], cfg["lora_alpha"], cfg["bias"],
            cfg["fan_in_fan_out"], cfg["base_model_name_or_path"]) == (
        "LORA", "CAUSAL_LM", 3, 5.0, "none", True, "base")


def gguf_arrays(path):
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    return fields, {t.name: np.array(t.data) for t in reader.tensors}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_gguf_factors_are_exactly_the_merged_change(tmp_path, arch):
    model = base_model(arch)
    adapter = trained_adapter(model)
    for m, name in ((model, "base"), (merged(model, adapter), "merged")):
        export_model(m, "gguf", tmp_path / f"{name}.gguf")
    _, before = gguf_arrays(tmp_path / "base.gguf")
    _, after = gguf_arrays(tmp_path / "merged.gguf")
    export_lora_gguf(adapter, tmp_path / "lora.gguf")
    fields, lora = gguf_arrays(tmp_path / "lora.gguf")
    assert (fields["general.type"], fields["adapter.type"], fields["general.architecture"]) == (
        "adapter", "lora", arch)
    assert fields["adapter.lora.alpha"] == pytest.approx(5.0)
    s = 5.0 / 3
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    bases = {k[:-len(".lora_a")] for k in lora if k.endswith(".lora_a")}
    assert bases == changed
    for name in bases:
        a, b = lora[name + ".lora_a"], lora[name + ".lora_b"]
        assert a.shape == (3, before[name].shape[1]) and b.shape == (before[name].shape[0], 3)
        np.testing.assert_allclose(after[name] - before[name], s * (b.astype(np.float64) @ a),
                                   atol=2e-6)


def test_llama_gguf_permutes_q_and_k_lora_b_only():
    model = base_model("llama")
    adapter = trained_adapter(model, "attn")
    out = gguf_lora_tensors(adapter)
    fused = adapter.tensors["model.layers.0.self_attn.qkv_proj.weight.lora_b"].T  # (64, r)
    q, k, v = fused[:32], fused[32:48], fused[48:]
    D = 8  # head dim: rows 2i, 2i+1 of a head are its rows i and i + D/2
    assert np.array_equal(out["blk.0.attn_q.weight.lora_b"][0:2], q[[0, D // 2]])
    assert np.array_equal(out["blk.0.attn_k.weight.lora_b"][D:D + 2], k[[D, D + D // 2]])
    assert np.array_equal(out["blk.0.attn_v.weight.lora_b"], v)
    lora_a = adapter.tensors["model.layers.0.self_attn.qkv_proj.weight.lora_a"].T
    assert all(np.array_equal(out[f"blk.0.attn_{p}.weight.lora_a"], lora_a) for p in "qkv")


def test_f16_export_and_bad_dtype(tmp_path):
    adapter = trained_adapter(base_model("gpt2"))
    export_peft(adapter, tmp_path / "peft", dtype="f16")
    loaded = safetensors_numpy.load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert {t.dtype for t in loaded.values()} == {np.dtype(np.float16)}
    export_lora_gguf(adapter, tmp_path / "a.gguf", dtype="f16")
    reader = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    assert {t.tensor_type.name for t in reader.tensors} == {"F16"}
    with pytest.raises(ExportError, match="--dtype for an adapter must be one of f32, f16, got 'q8_0'"):
        export_lora_gguf(adapter, tmp_path / "b.gguf", dtype="q8_0")
    assert not (tmp_path / "b.gguf").exists()


# ---- the CLI ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_lora")
    model = base_model("llama")
    model.save(d / "base.sllm")
    trained_adapter(model).save(d / "adapter.sllm")
    base_model("llama", seed=9).save(d / "other.sllm")
    (d / "run").mkdir()
    trained_adapter(model, "mlp").save(d / "run" / "adapter.sllm")
    trained_adapter(model).save(d / "run" / "checkpoint.sllm")  # a LoRA run's: an adapter's
    return d


def test_cli_exports_an_adapter_to_peft_and_gguf(files, tmp_path):
    code, out = run("export", files / "adapter.sllm", "--to", "peft", "--base",
                    files / "base.sllm", "-o", tmp_path / "peft")
    assert code == 0, out
    assert "adapter_config.json, adapter_model.safetensors" in out
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["r"] == 3 and cfg["base_model_name_or_path"] == "base"
    code, out = run("export", files / "run", "--to", "gguf", "--base", files / "base.sllm",
                    "-o", tmp_path / "a.gguf", "--dtype", "f16")
    assert code == 0 and "llama.cpp LoRA adapter, 12 tensors" in out, out  # 3 mlp x 2 layers
    code, out = run("export", files / "run", "--to", "gguf", "--base", files / "base.sllm",
                    "-o", tmp_path / "a.gguf")
    assert code == 1 and "already exists; pass --overwrite" in out
    code, out = run("export", files / "run", "--to", "gguf", "--base", files / "base.sllm",
                    "-o", tmp_path / "a.gguf", "--overwrite")
    assert code == 0, out


@pytest.mark.parametrize("args,message", [
    (("adapter.sllm", "--to", "peft", "--base", "other.sllm"), "made for another base model"),
    (("adapter.sllm", "--to", "hf", "--base", "base.sllm"),
     "a LoRA adapter exports --to peft or gguf, not 'hf'; --to hf writes a whole model"),
    (("adapter.sllm", "--to", "peft"), "is a LoRA adapter: export it with --to peft or --to "
                                       "gguf and --base BASE"),
    (("base.sllm", "--to", "peft", "--base", "other.sllm"), "--base is for exporting a LoRA "
                                                            "adapter; "),
    (("adapter.sllm", "--to", "gguf", "--base", "missing.sllm"), "no such model file"),
    (("missing.sllm", "--to", "gguf", "--base", "base.sllm"), "no such adapter file"),
    (("adapter.sllm", "--to", "gguf", "--base", "base.sllm", "--dtype", "q4_0"),
     "--dtype for an adapter must be one of f32, f16"),
])
def test_cli_refuses_in_one_line(files, tmp_path, args, message):
    first, *rest = args
    rest = [files / a if a.endswith(".sllm") else a for a in rest]
    code, out = run("export", files / first, *rest, "-o", tmp_path / "out")
    assert code == 1 and message in " ".join(out.split()), out
    assert len(out.strip().splitlines()) <= 3  # one message (rich may wrap it)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_the_adapter_as_its_own_output(files):
    code, out = run("export", files / "adapter.sllm", "--to", "gguf", "--base",
                    files / "base.sllm", "-o", files / "adapter.sllm", "--overwrite")
    assert code == 1 and "is the input" in out
