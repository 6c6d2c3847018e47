"""Imports bounded by the file (issue 29, items 3, 4 and 8 of "Why"): an HF config with
`n_layer: 2147483648` grew to 2.9 GB before failing; a GGUF whose sllm.config says 100,000
layers allocated 4.7 GiB; `n_layer: 1` on 2-layer weights dropped a layer with exit 0;
`tie_word_embeddings: -1` discarded lm_head; a GGUF tensor offset of 2^64-1 imported;
51 of 360 mutated GGUF files raised IndexError; config.json `[]` raised AttributeError.

Every foreign format is fuzzed 1,000 times: each mutated input either imports or raises
sllm's own error; a third outcome (any other exception) fails the test."""
from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest

import sllm
from sllm import tokenizer as tokenizers
from sllm.errors import ExportError, FormatError, SLLMError
from sllm.export import export_model, import_model
from sllm.gguf_file import check_gguf_counts

TEXT = "the cat sat on the mat. the dog sat on the log. " * 20
FUZZ_RUNS = 1000
ODD_VALUES = [[], {}, None, -1, 0, 2**31, 2**64, 1e308, -1e-9, "x", True, [1, 2], {"a": 1}]


def _model(layers=2, tie=False):
    tok = tokenizers.WordTokenizer.train(TEXT, 12, byte_fallback=False)
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=8, num_layers=layers,
                           num_heads=2, ffn_hidden_dim=16, dropout=0.0, max_seq_len=8,
                           tie_embeddings=tie)
    m = sllm.SLLM(cfg, backend="numpy", seed=2)
    m.tokenizer = tok.to_dict()
    return m


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    m = _model()
    export_model(m, "hf", root / "hf")
    export_model(m, "gguf", root / "m.gguf")
    llama = sllm.SLLM(sllm.ModelConfig(
        architecture="llama", vocab_size=m.config.vocab_size, embedding_dim=32, num_layers=2,
        num_heads=2, num_kv_heads=1, ffn_hidden_dim=64, max_seq_len=8, dropout=0.0),
        backend="numpy", seed=3)
    llama.tokenizer = m.tokenizer
    export_model(llama, "gguf", root / "llama.gguf", dtype="q8_0")  # blocks and f32 norms
    return root


def _config(d):
    return json.loads((d / "config.json").read_text())


def _with_config(src, dst, **change):
    import shutil
    shutil.copytree(src, dst)
    cfg = _config(src)
    cfg.update(change)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_hf_sizes_beyond_the_file_are_refused_before_allocating(exported, tmp_path):
    for key, value in (("n_layer", 2147483648), ("n_embd", 2**20), ("vocab_size", 10**9),
                       ("n_positions", 10**9)):
        d = _with_config(exported / "hf", tmp_path / key, **{key: value})
        t0 = time.perf_counter()
        with pytest.raises(SLLMError, match="can hold|divisible|budget"):
            import_model(d)
        assert time.perf_counter() - t0 < 5


def test_hf_config_must_match_the_tensors_exactly(exported, tmp_path):
    d = _with_config(exported / "hf", tmp_path / "one", n_layer=1)
    with pytest.raises(FormatError, match=r"'h.1.attn.c_attn.bias' is not part of the model"):
        import_model(d)
    d = _with_config(exported / "hf", tmp_path / "tie", tie_word_embeddings=-1)
    with pytest.raises(SLLMError, match="tie_word_embeddings must be true or false, got -1"):
        import_model(d)


@pytest.mark.parametrize("text,message", [
    ("[]", "expected a JSON object, got list"), ("7", "expected a JSON object"),
    ('{"model_type": "gpt2", "n_embd": "8"}', "n_embd must be an integer"),
    ('{"model_type": "gpt2", "layer_norm_epsilon": "1e-5"}', "layer_norm_epsilon must be a number"),
    ("[" * 100_000, "not valid JSON"),
])
def test_hf_config_json_of_the_wrong_shape_is_a_clean_error(exported, tmp_path, text, message):
    d = _with_config(exported / "hf", tmp_path / "bad")
    (d / "config.json").write_text(text)
    with pytest.raises(SLLMError, match=message):
        import_model(d)


def test_hf_null_epsilon_means_the_default(exported, tmp_path):
    d = _with_config(exported / "hf", tmp_path / "null", layer_norm_epsilon=None)
    assert import_model(d).config.num_layers == 2


def _gguf_with_config(path, config_json):
    import gguf
    m = _model()
    from sllm.gguf_file import gguf_name, gguf_orientation
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_string("sllm.config", config_json)
    for name, p in m.parameters().items():
        w.add_tensor(gguf_name(name), np.ascontiguousarray(gguf_orientation(name, p)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_config_beyond_the_file_is_refused_before_allocating(tmp_path):
    cfg = _model().config.to_dict()
    for key, value in (("numLayers", 100_000), ("embeddingDim", 2**20)):
        path = _gguf_with_config(tmp_path / f"{key}.gguf", json.dumps({**cfg, key: value}))
        t0 = time.perf_counter()
        with pytest.raises(SLLMError, match="can hold|divisible|budget"):
            import_model(path)
        assert time.perf_counter() - t0 < 5
    one = _gguf_with_config(tmp_path / "one.gguf", json.dumps({**cfg, "numLayers": 1}))
    with pytest.raises(FormatError, match="blk.1.* is not part of the model"):
        import_model(one)
    for text in ("[]", "null", "{", '{"numLayers": "2"}'):
        with pytest.raises(SLLMError):
            import_model(_gguf_with_config(tmp_path / "bad.gguf", text))


def test_a_gguf_tensor_offset_past_the_file_is_refused(exported, tmp_path):
    raw = bytearray((exported / "m.gguf").read_bytes())
    name = b"token_embd.weight"
    at = raw.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    (ndim,) = struct.unpack_from("<I", raw, at)
    struct.pack_into("<Q", raw, at + 4 + 8 * ndim + 4, 2**64 - 1)
    (tmp_path / "far.gguf").write_bytes(bytes(raw))
    with pytest.raises(SLLMError, match="not a readable GGUF|past the end"):
        import_model(tmp_path / "far.gguf")


def _outcome(fn):
    """'ok', 'error' (sllm's own) or the name of any other exception (a failure)."""
    try:
        fn()
    except SLLMError:
        return "error"
    except Exception as e:  # noqa: BLE001 - what the fuzz counts
        return f"{type(e).__name__}: {e}"[:200]
    return "ok"


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    raw = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.integers(1, 9)):
            raw[rng.integers(len(raw))] = rng.integers(256)
    elif kind == 1:  # truncate
        raw = raw[:rng.integers(len(raw))]
    elif kind == 2:  # a u64-sized field set to an extreme
        at = rng.integers(len(raw) - 8)
        raw[at:at + 8] = struct.pack("<Q", [2**64 - 1, 2**63, 2**32, 0][rng.integers(4)])
    else:  # insert bytes
        at = rng.integers(len(raw))
        raw[at:at] = bytes(rng.integers(256, size=rng.integers(1, 16), dtype=np.uint8))
    return bytes(raw)


def _fuzz(make_input, run, rng):
    counts: dict[str, int] = {}
    for _ in range(FUZZ_RUNS):
        make_input(rng)
        out = _outcome(run)
        key = out if out in ("ok", "error") else "other"
        counts[key] = counts.get(key, 0) + 1
        assert key != "other", out
    return counts


def test_fuzz_gguf_files(exported, tmp_path):
    good = (exported / "m.gguf").read_bytes()
    path = tmp_path / "f.gguf"
    counts = _fuzz(lambda rng: path.write_bytes(_flip(good, rng)), lambda: import_model(path),
                   np.random.default_rng(0))
    assert counts["error"] > 0 and sum(counts.values()) == FUZZ_RUNS


@pytest.mark.parametrize("name", ["llama.gguf", "foreign.gguf"])
def test_fuzz_llama_gguf_files(exported, tmp_path, name):
    """sllm's q8_0 llama export (its blocks kept, sllm's tokenizer), and an f32 file from
    gguf's writer with a SentencePiece vocabulary of its own (no sllm.* keys)."""
    if name == "foreign.gguf":
        from test_gguf_llama import _llama, _write_foreign
        _write_foreign(exported / name, _llama(), spm=True)
    good = (exported / name).read_bytes()
    path = tmp_path / "f.gguf"
    counts = _fuzz(lambda rng: path.write_bytes(_flip(good, rng)), lambda: import_model(path),
                   np.random.default_rng(3))
    assert counts["error"] > 0 and counts.get("ok", 0) > 0


def test_fuzz_safetensors_files(exported, tmp_path):
    import shutil
    d = tmp_path / "hf"
    shutil.copytree(exported / "hf", d)
    good = (exported / "hf" / "model.safetensors").read_bytes()
    counts = _fuzz(lambda rng: (d / "model.safetensors").write_bytes(_flip(good, rng)),
                   lambda: import_model(d), np.random.default_rng(1))
    assert counts["error"] > 0


def _mutate_json(doc, rng):
    """doc with one value (at any depth) replaced by an odd one, or a key dropped."""
    doc = json.loads(json.dumps(doc))
    node = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return doc
        key = keys[rng.integers(len(keys))]
        child = node[key]
        if isinstance(child, (dict, list)) and child and rng.random() < 0.5:
            node = child
            continue
        if isinstance(node, dict) and rng.random() < 0.2:
            del node[key]
        else:
            node[key] = ODD_VALUES[rng.integers(len(ODD_VALUES))]
        return doc


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_fuzz_hf_json_files(exported, tmp_path, name):
    import shutil
    d = tmp_path / "hf"
    shutil.copytree(exported / "hf", d)
    good = json.loads((exported / "hf" / name).read_text())
    counts = _fuzz(lambda rng: (d / name).write_text(json.dumps(_mutate_json(good, rng))),
                   lambda: import_model(d), np.random.default_rng(2))
    assert counts.get("ok", 0) + counts.get("error", 0) == FUZZ_RUNS


def test_a_gguf_array_count_beyond_the_file_is_refused_before_gguf_reads_it(exported, tmp_path):
    """gguf's reader builds one object per array element: a vocabulary count of 2**40 in a
    small file once grew a fuzzing run to 22 GB. The walk refuses it first, by offset."""
    good = bytearray((exported / "m.gguf").read_bytes())
    key = b"tokenizer.ggml.tokens"
    at = good.index(key) + len(key) + 4 + 4  # the key, the array type, the element type
    good[at:at + 8] = (2**40).to_bytes(8, "little")
    path = tmp_path / "big.gguf"
    path.write_bytes(bytes(good))
    with pytest.raises(ExportError, match=r"more bytes are needed than the file's"):
        check_gguf_counts(path)
    with pytest.raises(ExportError):
        import_model(path)
