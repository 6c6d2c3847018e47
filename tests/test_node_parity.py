"""The JavaScript twins of sllm's Python modules, checked against Python under Node: the
format reader and writer (sllm/web/format.js and sllm/serialize.py), the tokenizers
(tokenizers.js, sllm/tokenizer.py), sampling (sllm.js's sampleNext, sllm.generate), the
seed mixer (model.js, sllm.model), the model's forward and greedy decoding (model.js over
kernels.js, sllm/model.py over the wasm backends), training steps (model.js's AdamW,
sllm.optim) and chat turns (sllm.js's ChatSession, sllm.chat), on fixtures written here.
No browser needed; tests/test_web.py keeps what only a browser shows. Without node >= 18
these tests skip (and fail when SLLM_REQUIRE_NODE=1, as in .ci/run).

A new twin case: a test that calls `run_node(body, *args)` (tests/node_js.py) with the
JavaScript to run and compares what it returns with Python."""
from __future__ import annotations

import base64
import functools
import unicodedata
import zlib

import numpy as np
import pytest
from node_js import run_node, skip_without_node
from twins import JAPANESE, JS_TRAIN_STEPS, ODD_TEXT, corrupt_files, corrupt_quantized, python_train_steps

import sllm
from sllm import tokenizer as tokenizers
from sllm.corpus import generate_corpus
from sllm.generate import encode_prompt
from sllm.sampler import sample_next
from sllm.serialize import read_model_file


@pytest.fixture(scope="module", autouse=True)
def _node():
    skip_without_node()


CFG = {"vocabSize": 300, "embeddingDim": 32, "numLayers": 2, "numHeads": 2,
       "ffnHiddenDim": 64, "dropout": 0.0, "maxSeqLen": 48}
PROMPT = "Once upon a time, there was a"


def _save(model, tok, path, **save):
    model.tokenizer = tok.to_dict()
    model.save(path, **save)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model files with random weights and a tokenizer inside, by name: f32 GELU untied,
    ReLU with tied embeddings, f16, the three quantized types, and byte-level BPE."""
    out = tmp_path_factory.mktemp("twins")
    text = generate_corpus(20_000, seed=2) + "\n" + (JAPANESE + "\n") * 20
    word = tokenizers.WordTokenizer.train(text, 300)
    bpe = tokenizers.BPETokenizer.train(text, 300)
    cfg = {**CFG, "vocabSize": word.vocab_size}

    def make(seed, **changes):
        return sllm.SLLM({**cfg, **changes}, backend="numpy", seed=seed)
    files = {"f32": _save(make(1), word, out / "f32.sllm"),
             "relu-tied": _save(make(2, activation="relu", tieEmbeddings=True), word, out / "relu.sllm"),
             "f16": _save(make(3), word, out / "f16.sllm", dtype="f16"),
             "bpe": _save(make(4, vocabSize=bpe.vocab_size), bpe, out / "bpe.sllm")}
    for qtype in ("q8_0", "q4_0", "q4_1"):
        files[qtype] = _save(make(5).quantize(qtype), word, out / f"{qtype}.sllm")
    llama = {"architecture": "llama", "numHeads": 4, "ropeTheta": 500000.0}
    files["llama-gqa"] = _save(make(6, **llama, numKvHeads=2), word, out / "llama-gqa.sllm")
    files["llama-mqa-tied-f16"] = _save(make(7, **llama, numKvHeads=1, tieEmbeddings=True), word,
                                        out / "llama-mqa.sllm", dtype="f16")
    for qtype in ("q8_0", "q4_0", "q4_1"):
        files[f"llama-{qtype}"] = _save(make(8, **llama, numKvHeads=2).quantize(qtype), word,
                                        out / f"llama-{qtype}.sllm")
    return files


# ---- the model: forward and greedy decoding, on the same WebAssembly module ------------------
@functools.cache
def _node_features():
    return run_node("return web.kernels.features();")


def _python_backend(variant):
    """The Python backend that runs the module Node runs as `variant`, or None."""
    from sllm.backends.wasm import WasmBackend, WasmSimdBackend
    if variant == "scalar":
        return WasmBackend()
    if variant == "relaxed":
        backend = WasmSimdBackend()
        return backend if backend.capabilities["module"] == "sllm_relaxed.wasm" else None
    only_simd128 = type("Simd128", (WasmSimdBackend,), {  # wasm-simd without its relaxed module
        "modules": (("sllm_simd128.wasm", False, "simd128"),), "_probed": {}})
    return only_simd128()


@pytest.mark.filterwarnings("ignore:context full")  # 40 new tokens pass max_seq_len: both slide
@pytest.mark.parametrize("variant", ["relaxed", "simd128", "scalar"])
@pytest.mark.parametrize("name", ["f32", "relu-tied", "f16", "bpe", "q8_0", "q4_0", "q4_1",
                                  "llama-gqa", "llama-mqa-tied-f16", "llama-q8_0", "llama-q4_0",
                                  "llama-q4_1"])
def test_forward_and_greedy_tokens_equal_python(models, name, variant):
    """Node and Python run the same module, so the logits are equal bit for bit, and both
    are within float32 rounding of the numpy reference."""
    if "wasm" not in sllm.backends.available():
        pytest.skip("the WebAssembly modules were not built")
    if variant != "scalar" and not _node_features()["simd" if variant == "simd128" else "relaxed"]:
        pytest.skip(f"this node cannot run the {variant} module")
    backend = _python_backend(variant)
    if backend is None:
        pytest.skip(f"Python's runtime cannot run the {variant} module")
    py = sllm.load(models[name], backend=backend)
    tok = tokenizers.from_dict(py.tokenizer)
    prompt = JAPANESE[:10] if name == "bpe" else PROMPT
    ids = encode_prompt(tok, prompt, warn=False)
    got = run_node("""
const m = await web.loadModel(args[0], args[1]);
const ids = m.encodePrompt(args[2]);
return {wasm: m.wasm, ids, logits: Array.from(m.forward(ids)),
        tokens: [...m.tokens(ids, {maxTokens: 40, temperature: 0})]};
""", str(models[name]), variant, prompt)
    assert got["wasm"] == variant and got["ids"] == ids
    logits = np.array(got["logits"], dtype=np.float32).reshape(1, len(ids), -1)
    assert np.array_equal(logits, py.forward([ids]))
    assert got["tokens"] == py.generate(ids, 40, temperature=0)[len(ids):]
    reference = sllm.load(models[name], backend="numpy").forward([ids])
    # A quantized llama model quantizes activations to q8_0 on the fly, after the module's
    # rotary, exp and SwiGLU, whose float32 roundings differ from numpy's: one value moved
    # across a rounding boundary changes its block by a quantization step (~1/127 of it).
    tol = 3e-3 if name.startswith("llama-q") else 1e-4
    assert np.allclose(logits, reference, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["f32", "relu-tied", "q8_0", "q4_0", "q4_1", "llama-gqa",
                                  "llama-mqa-tied-f16", "llama-q8_0", "llama-q4_0", "llama-q4_1"])
def test_fused_decode_block_equals_the_kernel_line(models, name):
    """The browser's decode steps run a block as one decode_block (llama_decode_block) call
    where the module has it (as sllm's wasm backends do): the logits of a prefill and three
    steps equal, bit for bit, those of the same steps run kernel by kernel."""
    if "wasm" not in sllm.backends.available():
        pytest.skip("the WebAssembly modules were not built")
    got = run_node("""
const m = await web.loadModel(args[0]);
const ids = m.encodePrompt(args[1]), k = m.kernels, call = k.call.bind(k), calls = new Map();
k.call = (name, ...slots) => { calls.set(name, (calls.get(name) || 0) + 1); return call(name, ...slots); };
const steps = () => {
  const cache = m.net.newCache(), rows = [Array.from(m.decodeStep(ids, cache))];
  for (const t of [5, 9, 2]) rows.push(Array.from(m.decodeStep([t], cache)));
  m.net.releaseCache(cache);
  return rows;
};
const kernel = args[2], fused = steps(), blocks = calls.get(kernel) || 0;
m.net.fusedWeights = () => null;
calls.clear();
return {fused, blocks, line: steps(), after: calls.get(kernel) || 0};
""", str(models[name]), PROMPT, "llama_decode_block" if name.startswith("llama") else "decode_block")
    assert got["blocks"] == 2 * 4 and got["after"] == 0  # two layers, four steps
    assert np.array_equal(np.array(got["fused"], np.float32), np.array(got["line"], np.float32))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("name", ["f32", "llama-gqa"])
def test_training_steps_equal_python(models, name, dropout, tmp_path):
    """Model.trainStep (model.js or llama.js: forward, backward, clip, AdamW) gives Python's
    losses on the scalar module, dropout masks included, and the weights it saves load in
    Python."""
    source = sllm.load(models[name], backend="numpy")
    py = sllm.SLLM(source.config.replace(dropout=dropout), backend=_python_backend("scalar"))
    for name, value in source.parameters().items():
        py.parameters()[name][...] = value
    py.tokenizer = source.tokenizer
    path = _save(py, tokenizers.from_dict(py.tokenizer), tmp_path / "drop.sllm")
    rng = np.random.default_rng(3)
    batches = [(rng.integers(0, 300, (4, 24)), rng.integers(0, 300, (4, 24))) for _ in range(3)]
    expected = python_train_steps(py, batches)
    got = run_node("""
const m = await web.loadModel(args[0], "scalar");
const losses = """ + JS_TRAIN_STEPS + """;
return {losses, logits: Array.from(m.forward([2, 5, 7, 11]))};
""", str(path), [[x.tolist(), y.tolist()] for x, y in batches])
    assert np.allclose(got["losses"], expected, rtol=1e-5, atol=0), (got["losses"], expected)
    logits = np.array(got["logits"], dtype=np.float32).reshape(1, 4, -1)
    assert np.allclose(logits, py.forward([[2, 5, 7, 11]]), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:not in the vocabulary")
def test_chat_turns_equal_python(models):
    """sllm.js's ChatSession builds sllm.chat's A:/B: dialogue and answers the same (greedy)."""
    from sllm.chat import ChatSession
    py = sllm.load(models["f32"], backend=_python_backend("scalar"))
    session = ChatSession(py, tokenizers.from_dict(py.tokenizer), max_new_tokens=12, temperature=0)
    lines = ["Hello! How are you?", "Do you have a pet?", "What do you like to eat?"] * 2
    expected = ["".join(session.reply(line)) for line in lines]
    got = run_node("""
const m = await web.loadModel(args[0], "scalar");
const chat = m.chat({maxTokens: 12, temperature: 0});
const out = [];
for (const line of args[1]) {
  let text = "";
  for await (const piece of chat.reply(line)) text += piece;
  out.push(text);
}
return out;
""", str(models["f32"]), lines)
    assert got == expected and any(expected)


# ---- the format: reader, writer, and refusals with Python's messages ----------------------
def _python_tensors(path):
    """name -> (dtype, shape, CRC-32 of the values as float32, or of the quantized blocks)."""
    model = sllm.load(path, backend="numpy")
    quantized = model.quantized_weights() if hasattr(model, "quantized_weights") else {}
    out = {}
    for name, q in quantized.items():
        out[name] = (q.qtype, list(q.data.shape[:1]) + [q.shape[1]], zlib.crc32(q.data.tobytes()))
    for name, value in model.parameters().items():
        if name not in out:
            out[name] = (None, list(value.shape), zlib.crc32(np.ascontiguousarray(value, np.float32).tobytes()))
    return model, out


@pytest.mark.parametrize("name", ["f32", "relu-tied", "f16", "bpe", "q8_0", "q4_1",
                                  "llama-mqa-tied-f16", "llama-q4_0"])
def test_reader_and_writer_agree_with_python(models, name, tmp_path):
    """format.js reads what Python wrote (config, tokenizer, every tensor's values), and
    Python reads what format.js writes (Model.save) back to the same model."""
    model, expected = _python_tensors(models[name])
    got = run_node("""
const { readModel, tensorToF32, crc32 } = web.format;
const file = readModel(await web.bytes(args[0]), "f");
const tensors = {};
for (const [name, t] of Object.entries(file.tensors)) {
  let data = t.bytes;
  if (!t.quantized) {
    const f = new Float32Array(t.shape.reduce((a, b) => a * b, 1));
    tensorToF32(t, f);
    data = new Uint8Array(f.buffer);
  }
  tensors[name] = [t.quantized ? t.dtype : null, t.shape, crc32(data)];
}
const m = await web.loadModel(args[0], "scalar");
const saved = await m.save();
let s = ""; for (const b of saved) s += String.fromCharCode(b);
return {configDict: file.configDict, tokenizer: file.tokenizer, tensors, saved: btoa(s)};
""", str(models[name]))
    assert got["configDict"] == read_model_file(models[name]).config.to_dict()
    assert got["tokenizer"] == model.tokenizer
    assert got["tensors"] == {k: list(v) for k, v in expected.items()}
    path = tmp_path / "from-node.sllm"
    path.write_bytes(base64.b64decode(got["saved"]))
    again, tensors = _python_tensors(path)
    assert tensors == expected and again.config == model.config
    assert again.tokenizer == model.tokenizer


@pytest.mark.parametrize("name", ["f32", "q4_1"])
def test_reader_rejects_what_python_rejects(models, name, tmp_path):
    good = models[name].read_bytes()
    cases = {**corrupt_files(good), **(corrupt_quantized(good) if name != "f32" else {})}
    got = run_node("""
const out = {};
for (const [name, b64] of Object.entries(args[0])) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  try { web.format.readModel(bytes, "f"); out[name] = "ok"; } catch (e) { out[name] = e.name + ": " + e.message; }
}
return out;
""", {k: base64.b64encode(v).decode() for k, v in {**cases, "good": good}.items()})
    assert got.pop("good") == "ok"
    for case, message in got.items():
        path = tmp_path / "corrupt.sllm"
        path.write_bytes(cases[case])
        with pytest.raises(sllm.FormatError) as info:
            read_model_file(path)
        assert message == f"FormatError: {str(info.value).replace(str(path), 'f')}", case


# ---- sampling and seeds ---------------------------------------------------------------------
SETTINGS = [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.9), (0.8, 10, 0.5), (2.0, 1, None),
            (0.0, None, None), (1.0, 50, 0.999)]


def test_sampling_picks_what_python_picks_for_the_same_draw():
    """sampleNext and sample_next turn one uniform draw into the same token for every
    temperature / top-k / top-p: numpy's choice(p=...) takes one draw from the generator,
    which the JavaScript side is handed as its random()."""
    rows = np.random.default_rng(0).normal(0, 3, (8, 50)).astype(np.float32)
    cases, expected = [], []
    for row in rows:
        for t, k, p in SETTINGS:
            for seed in range(12):
                cases.append([row.tolist(), float(np.random.default_rng(seed).random()), t, k, p])
                expected.append(sample_next(row, np.random.default_rng(seed), t, k, p))
    got = run_node("""
return args[0].map(([logits, u, t, k, p]) =>
  web.sllm.sampleNext(Float32Array.from(logits), logits.length, () => u, t, k, p));
""", cases)
    assert got == expected
    assert len(set(expected)) > 20  # the draws reach many tokens, not only the argmax


def test_seed_mixer_equals_python():
    from sllm.model import mix_seed as mix
    parts = [[0], [1, 2], [2**53 - 1, 7, 0], [123456789, 2**40 + 3], [5, 6, 7, 8, 9]]  # JSON: < 2**53
    assert run_node("return args[0].map((p) => web.model.mixSeed(...p));", parts) == \
        [mix(*p) for p in parts]


# ---- tokenizers ------------------------------------------------------------------------------
def _tokenizers():
    text = generate_corpus(30_000, seed=1) + "\n" + JAPANESE * 20
    return {"word": tokenizers.WordTokenizer.train(text, 400),
            "word-unk": tokenizers.WordTokenizer.train(text, 400, byte_fallback=False),
            "word-lower": tokenizers.WordTokenizer.train(text, 400, lowercase=True),
            "char": tokenizers.CharTokenizer.train(text),
            "char-unk": tokenizers.CharTokenizer.train(text, byte_fallback=False),
            "bpe": tokenizers.BPETokenizer.train(text, 420)}


def test_tokenizers_encode_and_decode_as_python():
    toks = _tokenizers()
    samples = [ODD_TEXT, JAPANESE, "Once upon a time, a zyzzyva met Qwertyuiop.",
               generate_corpus(3000, seed=9), "", "  leading spaces\n\n\nand blank lines\n"]
    got = run_node("""
const out = {};
for (const [name, d] of Object.entries(args[0])) {
  const t = web.tokenizers.tokenizerFromDict(d);
  out[name] = args[1].map((s) => { const ids = t.encode(s); return [ids, t.decode(ids), t.unknownPieces(s)]; });
}
return out;
""", {k: t.to_dict() for k, t in toks.items()}, samples)
    for name, tok in toks.items():
        for sample, (ids, text, unknown) in zip(samples, got[name], strict=True):
            assert ids == tok.encode(sample), (name, sample)
            assert text == tok.decode(ids), (name, sample)
            assert unknown == tok.unknown_pieces(sample), (name, sample)
    assert tokenizers.UNK_ID in got["word-unk"][2][0]  # unknown words are [UNK], as in Python
    assert got["word"][2][1] == samples[2]  # with byte fallback, exactly the text


def _spm(text, seed=0):
    """An spm vocabulary (run.c's layout: <unk> <s> </s>, the byte tokens, pieces): some of
    the text's characters and substrings, random scores with ties, one duplicate piece."""
    rng = np.random.default_rng(seed)
    chars = sorted(set(text))[::2] + [" "]
    pieces = ["<unk>", "<s>", "</s>", *tokenizers.BYTE_TOKENS, *dict.fromkeys(chars)]
    for _ in range(600):
        at = int(rng.integers(len(text) - 6))
        pieces.append(text[at:at + int(rng.integers(2, 6))])
    pieces = list(dict.fromkeys(pieces)) + ["</s>"]
    scores = [0.0] * 259 + [-float(rng.integers(1, 60)) / 4 for _ in pieces[259:]]
    return tokenizers.SPMTokenizer(pieces, scores)


def test_spm_encodes_and_decodes_as_python():
    text = generate_corpus(3000, seed=9)
    tok = _spm(text + JAPANESE)
    samples = [ODD_TEXT, JAPANESE, text, "", " ", "<0x41><s>", "  leading spaces\n\n"]
    rng = np.random.default_rng(1)
    random_ids = [rng.integers(tok.vocab_size, size=20).tolist() for _ in range(30)]
    got = run_node("""
const t = web.tokenizers.tokenizerFromDict(args[0]);
const enc = args[1].map((s) => t.encode(s));
return {enc, withBos: enc.map((ids) => t.decode([1, ...ids])),
        random: args[2].map((ids) => t.decode(ids)),
        bytes: Array.from({length: t.vocabSize}, (_, i) => Array.from(t.tokenBytes(i))),
        fallback: t.byteFallback};
""", tok.to_dict(), samples, random_ids)
    assert got["enc"] == [tok.encode(x) for x in samples]
    assert got["withBos"] == [tok.decode([1, *tok.encode(x)]) for x in samples] == samples
    assert got["random"] == [tok.decode(ids) for ids in random_ids]
    assert got["bytes"] == [list(tok.token_bytes(i)) for i in range(tok.vocab_size)]
    assert got["fallback"] is tok.byte_fallback is True


def _python_classes(limit):
    """Per code point: how sllm's word regex splits 'a' + c (1: joins the word, 2: a
    separate symbol, 0: dropped as space, 3: other)."""
    word_re = tokenizers._WORD_RE
    out = bytearray()
    for cp in range(limit):
        if 0xD800 <= cp < 0xE000:
            out.append(ord("0") + 9)
            continue
        parts = word_re.findall("a" + chr(cp))
        out.append(ord("0") + {1: 1 if len(parts[0]) == 2 else 0, 2: 2}.get(len(parts), 3))
    return out.decode()


def test_word_classes_match_python_for_every_assigned_code_point():
    limit = 0x110000
    got = run_node("""
const t = web.tokenizers.tokenizerFromDict({type: "word", tokens: ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]});
const out = new Array(args[0]);
for (let cp = 0; cp < args[0]; cp++) {
  if (cp >= 0xD800 && cp < 0xE000) { out[cp] = "9"; continue; }
  const parts = t.words("a" + String.fromCodePoint(cp));
  out[cp] = parts.length === 1 ? (parts[0].length > 1 ? "1" : "0") : parts.length === 2 ? "2" : "3";
}
return out.join("");
""", limit)
    expected = _python_classes(limit)
    # Characters that Python's Unicode tables do not know yet (unicodedata.unidata_version is
    # older than Node's ICU) are not compared: Python calls them symbols, Node letters.
    bad = [i for i in range(limit) if got[i] != expected[i]
           and unicodedata.category(chr(i)) != "Cn"]
    shown = [(hex(i), unicodedata.name(chr(i), "?"), expected[i], got[i]) for i in bad[:10]]
    assert not bad, f"{len(bad)} code points split differently: {shown}"


def test_bpe_matches_python_for_every_bmp_character():
    tok = _tokenizers()["bpe"]
    chars = [chr(c) for c in range(1, 0x10000) if not 0xD800 <= c < 0xE000]
    samples = ["x" + "".join(chars[i:i + 64]) + " y" for i in range(0, len(chars), 64)]
    got = run_node("""
const t = web.tokenizers.tokenizerFromDict(args[0]);
return args[1].map((s) => t.encode(s));
""", tok.to_dict(), samples)
    bad = [s for s, ids in zip(samples, got, strict=True) if ids != tok.encode(s)]
    assert not bad, f"{len(bad)} of {len(samples)} chunks differ, first: {bad[0][:20]!r}"
