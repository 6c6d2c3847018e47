"""sllm/web/lora.js, the JavaScript twin of sllm/lora.py, checked against Python under Node:
the base's fingerprint, LoRA fine-tuning steps (the adapter's forward delta, the frozen
base's backward, AdamW over the adapter only) on GPT-2, llama and a quantized base, and
adapter files both ways (an adapter the browser saves loads in Python with the same logits,
and the other way round; the same refusals). The initial adapter comes from one side as a
file, so no random stream has to agree. Skips without node >= 18, as
tests/test_node_parity.py."""
from __future__ import annotations

import base64
import functools
from pathlib import Path

import numpy as np
import pytest
from node_js import run_node, skip_without_node
from twins import JS_TRAIN_STEPS, corrupt_files, python_train_steps

import sllm
from sllm import tokenizer as tokenizers
from sllm.corpus import generate_corpus
from sllm.lora import Adapter, LoraConfig, fingerprint


@pytest.fixture(scope="module", autouse=True)
def _node():
    skip_without_node()
    if "wasm" not in sllm.backends.available():
        pytest.skip("the WebAssembly modules were not built")


CFG = {"vocabSize": 300, "embeddingDim": 32, "numLayers": 2, "numHeads": 2, "ffnHiddenDim": 64,
       "dropout": 0.0, "maxSeqLen": 48}
LLAMA = {"architecture": "llama", "numHeads": 4, "numKvHeads": 2, "ropeTheta": 500000.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model files with random weights and a word tokenizer: GPT-2 (f32 and f16), tied llama
    with grouped-query attention, and the GPT-2 model quantized to q8_0 and q4_1."""
    out = tmp_path_factory.mktemp("lora-twins")
    tok = tokenizers.WordTokenizer.train(generate_corpus(20_000, seed=2), 300)
    cfg = {**CFG, "vocabSize": tok.vocab_size}
    files = {}

    def save(name, model, **kw):
        model.tokenizer = tok.to_dict()
        model.save(out / f"{name}.sllm", **kw)
        files[name] = out / f"{name}.sllm"
    save("gpt2", sllm.SLLM(cfg, backend="numpy", seed=1))
    save("gpt2-f16", sllm.SLLM(cfg, backend="numpy", seed=1), dtype="f16")
    save("llama", sllm.SLLM({**cfg, **LLAMA, "tieEmbeddings": True}, backend="numpy", seed=2))
    for qtype in ("q8_0", "q4_1"):
        save(qtype, sllm.SLLM(cfg, backend="numpy", seed=3).quantize(qtype))
    return files


@functools.cache
def _scalar():
    from sllm.backends.wasm import WasmBackend
    return WasmBackend()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


JS_BYTES = "let s = \"\"; for (const b of bytes) s += String.fromCharCode(b); return btoa(s);"
JS_HELPERS = """
const b64 = (bytes) => { """ + JS_BYTES + """ };
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
"""


def test_fingerprint_equals_python(models):
    """The fingerprint an adapter names its base by: config JSON (Python's floats and
    separators) and every tensor as the model holds it (f16 widened, quantized rows)."""
    got = run_node("""
const out = {};
for (const [name, path] of Object.entries(args[0])) out[name] = (await web.loadModel(path, "scalar")).fingerprint();
return out;
""", {k: str(v) for k, v in models.items()})
    expected = {k: fingerprint(sllm.load(v, backend="numpy")) for k, v in models.items()}
    assert got == expected
    assert got["gpt2"] != got["gpt2-f16"]  # f16 rounding changed the weights


def test_sha256_and_python_floats_match_python():
    import hashlib
    data = bytes(range(256)) * 5
    cases = [data[:n] for n in (0, 1, 55, 56, 63, 64, 65, 119, 128, 1000, 1280)]
    got = run_node("""
return {hashes: args[0].map((s) => {
  const h = new web.lora.Sha256(), b = Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  h.update(b.subarray(0, 7));
  h.update(b.subarray(7));
  return h.hex();
}),
  floats: args[1].map(web.lora.pyFloat)};
""", [_b64(c) for c in cases], [1e-5, 1e-6, 500000.0, 1e4, 0.1, 1.5e20, 123.456, 1e16, 1e-4, 2.5e-7, 3.0])
    assert got["hashes"] == [hashlib.sha256(c).hexdigest() for c in cases]
    assert got["floats"] == [repr(x) for x in (1e-5, 1e-6, 500000.0, 1e4, 0.1, 1.5e20, 123.456, 1e16,
                                               1e-4, 2.5e-7, 3.0)]


def _batches(vocab, seed=3):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, vocab, (4, 24)), rng.integers(0, vocab, (4, 24))) for _ in range(3)]


@pytest.mark.parametrize("name,lora", [
    ("gpt2", {"rank": 4}), ("gpt2", {"rank": 2, "alpha": 3, "targets": "attn", "dropout": 0.1}),
    ("llama", {"rank": 4, "targets": "all"}), ("llama", {"rank": 3, "targets": "mlp,self_attn.o_proj.weight"}),
    ("q8_0", {"rank": 4}), ("q4_1", {"rank": 2, "targets": "mlp"})])
def test_lora_steps_equal_python_and_the_adapter_loads_there(models, name, lora, tmp_path):
    """Three LoRA fine-tuning steps in Node (forward delta, frozen-base backward, clipping,
    AdamW over the adapter) give Python's losses on the same module (bit for bit as measured)
    and numpy's within 1e-4; the adapter Node saves (f16, and f32 when asked) loads in
    Python (fingerprint checked) with Node's logits and Python's trained tensors (rounded to
    f16 as numpy rounds them); the base is untouched."""
    py = sllm.load(models[name], backend=_scalar())
    base_logits = py.forward([[2, 5, 7, 11]])
    batches = _batches(py.config.vocab_size)
    got = run_node(JS_HELPERS + """
const m = await web.loadModel(args[0], "scalar");
m.createAdapter(args[2], {seed: 5});
const initial = b64(m.saveAdapter({dtype: "f32"}));  // both sides start from the same values
const losses = """ + JS_TRAIN_STEPS + """;
const probe = [2, 5, 7, 11];
const saved32 = b64(m.saveAdapter({dtype: "f32"}));
const saved = m.saveAdapter();  // f16, as the page saves adapters
const info = m.adapter;
await m.loadAdapter(saved);  // the adapter as the file holds it
const adapted = Array.from(m.forward(probe));
m.detachAdapter();
return {initial, losses, adapted, saved: b64(saved), saved32, info, base: Array.from(m.forward(probe))};
""", str(models[name]), [[x.tolist(), y.tolist()] for x, y in batches], lora)
    (tmp_path / "initial.sllm").write_bytes(base64.b64decode(got["initial"]))
    initial = Adapter.load(tmp_path / "initial.sllm", py)
    assert initial.config == LoraConfig(**lora)
    assert got["info"]["parameters"] == initial.num_parameters() and got["info"]["targets"] == initial.targets
    assert not any(t.any() for n, t in initial.tensors.items() if n.endswith(".lora_b"))  # B = 0
    reference = sllm.load(models[name], backend="numpy")  # and numpy's kernels, within 1e-4
    reference.attach_adapter(Adapter.load(tmp_path / "initial.sllm", reference))
    numpy_losses = python_train_steps(reference, batches)
    assert np.allclose(got["losses"], numpy_losses, rtol=0, atol=1e-4), (got["losses"], numpy_losses)
    py.attach_adapter(initial)
    expected = python_train_steps(py, batches)
    assert np.allclose(got["losses"], expected, rtol=1e-5, atol=0), (got["losses"], expected)
    assert expected[-1] != expected[0]  # the adapter learned something
    (tmp_path / "trained32.sllm").write_bytes(base64.b64decode(got["saved32"]))
    (tmp_path / "trained.sllm").write_bytes(base64.b64decode(got["saved"]))
    trained32 = Adapter.load(tmp_path / "trained32.sllm", py)
    trained = Adapter.load(tmp_path / "trained.sllm", py)
    for tensor, value in py.adapter.adapter.tensors.items():
        assert np.allclose(trained32.tensors[tensor], value, rtol=1e-4, atol=1e-6), tensor
        assert np.array_equal(trained.tensors[tensor],  # the f16 file: f32 rounded, as numpy
                              trained32.tensors[tensor].astype(np.float16).astype(np.float32))
    assert (tmp_path / "trained.sllm").stat().st_size < (tmp_path / "trained32.sllm").stat().st_size
    py.detach_adapter()
    py.attach_adapter(trained)
    adapted = np.array(got["adapted"], np.float32).reshape(1, 4, -1)
    assert np.array_equal(py.forward([[2, 5, 7, 11]]), adapted)
    assert not np.allclose(adapted, base_logits, atol=1e-4)
    assert np.array_equal(np.array(got["base"], np.float32).reshape(1, 4, -1), base_logits)
    assert trained.metadata["trained_in_browser"]["steps"] == 3


@pytest.mark.parametrize("name,dtype", [("gpt2", "f16"), ("llama", "f32"), ("q8_0", "f16")])
def test_python_adapter_loads_in_node(models, name, dtype, tmp_path):
    """An adapter Python writes (f16, as `sllm finetune` does, or f32) attaches in Node with
    Python's logits; detaching gives the base back."""
    py = sllm.load(models[name], backend=_scalar())
    adapter = Adapter.create(py, LoraConfig(rank=4, targets="all"), seed=7)
    rng = np.random.default_rng(1)
    for tensor in adapter.tensors:  # a trained B: the delta shows in the logits
        if tensor.endswith(".lora_b"):
            adapter.tensors[tensor] = rng.normal(0, 0.5, adapter.tensors[tensor].shape).astype(np.float32)
    adapter.save(tmp_path / "adapter.sllm", dtype=dtype)
    loaded = Adapter.load(tmp_path / "adapter.sllm", py)
    base = py.forward([[3, 1, 4, 1, 5]])
    py.attach_adapter(loaded)
    expected = py.forward([[3, 1, 4, 1, 5]])
    got = run_node("""
const m = await web.loadModel(args[0], "scalar");
const info = await m.loadAdapter(await web.bytes(args[1]), {name: "adapter.sllm"});
const adapted = Array.from(m.forward([3, 1, 4, 1, 5]));
m.detachAdapter();
return {info, adapted, base: Array.from(m.forward([3, 1, 4, 1, 5]))};
""", str(models[name]), str(tmp_path / "adapter.sllm"))
    assert np.array_equal(np.array(got["adapted"], np.float32).reshape(expected.shape), expected)
    assert np.array_equal(np.array(got["base"], np.float32).reshape(base.shape), base)
    assert got["info"]["rank"] == 4 and got["info"]["alpha"] == 8
    assert got["info"]["base"]["fingerprint"] == fingerprint(sllm.load(models[name], backend="numpy"))


def _tricky_floats(n: int) -> np.ndarray:
    """n float32 values that exercise f32 -> f16 rounding: every f16 value and the ties
    half-way to its neighbours (even and odd, subnormal and normal, both signs), values a
    hair off those ties, signed zeros, values below half the smallest subnormal, 65504, and
    random bits within f16's range, in a shuffled order."""
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    ties = (halves[:-1] + halves[1:]) / 2  # exact in f32: f16 needs 11 bits, a tie 12
    ties32 = ties.astype(np.float32)
    nudged = np.concatenate([np.nextafter(ties32, np.float32(0)), np.nextafter(ties32, np.float32(1e9))])
    rng = np.random.default_rng(3)
    randbits = rng.integers(0, 0x477FE000, 100_000, dtype=np.uint32).view(np.float32)  # < 65504
    special = np.array([0.0, -0.0, 2.0 ** -26, -(2.0 ** -25), 2.0 ** -25 * 1.0000001, 65504.0,
                        -65504.0], np.float32)
    values = np.concatenate([halves.astype(np.float32), ties32, nudged, randbits, special])
    values = np.concatenate([values, -values])
    rng.shuffle(values)
    return np.resize(values, n).astype(np.float32)


def test_f16_encoding_equals_numpy():
    """format.js's f32ToF16 gives numpy's astype(float16) bits for every f16 value, every
    tie between two of them, their neighbours and random values; NaN and values beyond
    65504 are refused as Python's check_f16_range refuses them."""
    from sllm.errors import FormatError
    from sllm.finite import check_f16_range
    values = _tricky_floats(500_000)
    got = run_node(JS_HELPERS + """
const data = new Float32Array(unb64(args[0]).buffer);
const bits = web.format.f32ToF16(data, "w");
const refused = [];
for (const bad of [70000, -1e30, NaN, 65520]) {
  try { web.format.f32ToF16(new Float32Array([1, bad, 2]), "h.0.attn.c_attn.weight.lora_b"); refused.push("ok"); }
  catch (e) { refused.push(`${e.name}: ${e.message}`); }
}
return {bits: b64(new Uint8Array(bits.buffer)), refused};
""", _b64(values.tobytes()))
    expected = values.astype(np.float16).view(np.uint16)
    assert np.array_equal(np.frombuffer(base64.b64decode(got["bits"]), "<u2"), expected)
    for bad, message in zip([70000, -1e30, np.nan, 65520], got["refused"], strict=True):
        with pytest.raises(FormatError) as python:
            check_f16_range({"h.0.attn.c_attn.weight.lora_b": np.array([1, bad, 2], np.float32)})
        assert message.startswith("FormatError: " + str(python.value).split("; save as")[0] + ";")


@pytest.mark.parametrize("name", ["gpt2", "q8_0"])
def test_browser_adapter_files_equal_pythons(models, name, tmp_path):
    """The bytes the browser writes for an adapter are Python's Adapter.save bytes for the
    same adapter: f16 (the browser's default, as `sllm finetune` writes) and f32; Node
    reads Python's f32 file and writes it out again."""
    py = sllm.load(models[name], backend="numpy")
    adapter = Adapter.create(py, LoraConfig(rank=8, alpha=12, targets="all"), seed=7)
    values = _tricky_floats(sum(t.size for t in adapter.tensors.values()))
    at = 0
    for tensor in adapter.tensors.values():
        tensor[...] = values[at:at + tensor.size].reshape(tensor.shape)
        at += tensor.size
    adapter.metadata["note"] = "ünïcode ✓"
    for dtype in ("f32", "f16"):
        adapter.save(tmp_path / f"{dtype}.sllm", dtype=dtype)
    got = run_node(JS_HELPERS + """
const read = web.lora.Adapter.read(await web.bytes(args[0]), "f32.sllm");
return {f16: b64(read.write()), f32: b64(read.write({}, {dtype: "f32"}))};
""", str(tmp_path / "f32.sllm"))
    for dtype in ("f32", "f16"):
        assert base64.b64decode(got[dtype]) == (tmp_path / f"{dtype}.sllm").read_bytes(), dtype


def _corrupt_adapters(good: Adapter, path: Path) -> dict[str, bytes]:
    """Adapter files Python refuses: the container's corruptions and an adapter's own."""
    good.save(path / "good.sllm")
    cases = corrupt_files((path / "good.sllm").read_bytes())
    first = good.targets[0]

    def variant(key, change):
        a = Adapter(good.config, list(good.targets), dict(good.tensors), dict(good.base),
                    good.base_config, dict(good.metadata))
        change(a)
        a.save(path / f"{key}.sllm")
        cases[key] = (path / f"{key}.sllm").read_bytes()
    variant("wrong shape", lambda a: a.tensors.update({first + ".lora_a": np.zeros((3, 3), np.float32)}))
    variant("extra tensor", lambda a: a.tensors.update({"h.0.mlp.c_fc.bias": np.zeros(4, np.float32)}))
    variant("missing B", lambda a: a.tensors.pop(first + ".lora_b"))
    variant("not a target", lambda a: a.targets.append("wte"))
    variant("NaN", lambda a: a.tensors.update({first + ".lora_b": np.full(
        good.tensors[first + ".lora_b"].shape, np.nan, np.float32)}))
    return cases


def test_adapter_refusals_equal_python(models, tmp_path):
    """A malformed adapter file gets Python's FormatError, word for word; an adapter of
    another base gets a LoraError naming both fingerprints; a model file is no adapter."""
    py = sllm.load(models["gpt2"], backend="numpy")
    cases = _corrupt_adapters(Adapter.create(py, LoraConfig(rank=2), seed=1), tmp_path)
    other = tmp_path / "other.sllm"
    Adapter.create(sllm.load(models["gpt2-f16"], backend="numpy"), LoraConfig(rank=2)).save(other)
    got = run_node("""
const out = {};
for (const [name, s] of Object.entries(args[0])) {
  try { web.lora.Adapter.read(Uint8Array.from(atob(s), (c) => c.charCodeAt(0)), "f"); out[name] = "ok"; }
  catch (e) { out[name] = e.name + ": " + e.message; }
}
const m = await web.loadModel(args[1], "scalar");
for (const [name, path] of [["other base", args[2]], ["a model", args[1]]]) {
  try { await m.loadAdapter(await web.bytes(path), {name: "f"}); out[name] = "ok"; }
  catch (e) { out[name] = e.name + ": " + e.message; }
}
out.attached = m.adapter;
return out;
""", {k: _b64(v) for k, v in cases.items()}, str(models["gpt2"]), str(other))
    for case, data in cases.items():
        (tmp_path / "case.sllm").write_bytes(data)
        with pytest.raises(sllm.FormatError) as info:
            Adapter.load(tmp_path / "case.sllm")
        assert got[case] == f"FormatError: {str(info.value).replace(str(tmp_path / 'case.sllm'), 'f')}", case
    with pytest.raises(sllm.LoraError) as refused:
        Adapter.load(other, py)
    assert got["other base"] == f"LoraError: {refused.value}"
    assert got["a model"].startswith("FormatError: f: not a LoRA adapter")
    assert got["attached"] is None  # a refused adapter leaves the base as it was


def test_an_adapter_with_token_rows_is_refused_in_one_line(models, tmp_path):
    """The browser does not apply trainable token rows (sllm/lora_tokens.py): it says so
    and how to go on (merge first), and the base stays as it was."""
    py = sllm.load(models["gpt2"], backend="numpy")
    Adapter.create(py, LoraConfig(rank=2), seed=1, token_ids=[3, 7]).save(tmp_path / "t.sllm")
    got = run_node("""
const m = await web.loadModel(args[0], "scalar");
try { await m.loadAdapter(await web.bytes(args[1]), {name: "t"}); return "ok"; }
catch (e) { return [e.name + ": " + e.message, m.adapter]; }
""", str(models["gpt2"]), str(tmp_path / "t.sllm"))
    assert got[0] == ("FormatError: t: this adapter has trainable token rows (token_ids), which "
                      "the browser does not apply; merge it into its base (sllm merge) and load "
                      "the merged model")
    assert got[1] is None
