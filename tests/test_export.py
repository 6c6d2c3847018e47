"""Interop round trips: Hugging Face directories (safetensors) and GGUF files, both ways.

The comparison against transformers + torch themselves lives in tests/interop (make
test-interop, its own environment); here the files are checked with `safetensors`,
`tokenizers` and `gguf` alone.
"""
import json
import warnings

import numpy as np
import pytest

import sllm
from sllm import tokenizer as tokenizers
from sllm.corpus import generate_corpus
from sllm.errors import DataError, ExportError, FormatError
from sllm.export import import_model
from sllm.hf import config_from_hf, export_hf, hf_config, import_hf
from sllm.hf_tokenizer import from_tokenizer_json, read_hf_tokenizer, to_tokenizer_json

safetensors_numpy = pytest.importorskip("safetensors.numpy")
gguf = pytest.importorskip("gguf")
from sllm.gguf_file import export_gguf, gguf_name, import_gguf  # noqa: E402 - after pytest.importorskip

# Text that stresses the pre-tokenizers: runs of spaces and tabs, CRLF, blank lines,
# apostrophes (ASCII and U+2019), Japanese, literal special-token strings, a form feed.
AWKWARD = ("Hello  wor\tld!\r\nDon't ’tis  the end...\n\n  \n日本語のテキスト。 [PAD] [EOS]"
           " x\x0cy (a) [b] {c} 3.14 $5 50% café\n")


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(40_000, seed=3) + "日本語のテキスト。café"


@pytest.fixture(scope="module")
def toks(corpus):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"word": tokenizers.WordTokenizer.train(corpus, 2000),  # covers the corpus
                "word-unk": tokenizers.WordTokenizer.train(corpus, 300, byte_fallback=False),
                "word-lower": tokenizers.WordTokenizer.train(corpus, 300, lowercase=True),
                "char": tokenizers.CharTokenizer.train(corpus),
                "char-unk": tokenizers.CharTokenizer.train(corpus[:3000], byte_fallback=False),
                "bpe": tokenizers.BPETokenizer.train(corpus, 400)}


def make_model(tok, tie=False, activation="gelu", C=64, seed=0):
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=C, num_layers=2,
                           num_heads=4, ffn_hidden_dim=96, dropout=0.1, max_seq_len=24,
                           activation=activation, tie_embeddings=tie)
    m = sllm.SLLM(cfg, backend="numpy", seed=seed)
    m.tokenizer = tok.to_dict()
    return m.eval()


def assert_same_model(a, b):
    assert a.config == b.config
    assert a.tokenizer == b.tokenizer
    for name, p in a.parameters().items():
        assert np.array_equal(p, b.parameters()[name]), name


# ---- tokenizer.json ---------------------------------------------------------------------------
KINDS = ["word", "word-unk", "word-lower", "char", "char-unk", "bpe"]


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_json_gives_sllm_ids_and_text(toks, corpus, kind):
    """Same ids from encode, same text from decode (skip_special_tokens, the default), on
    the corpus and on awkward text; the byte-fallback word tokenizer's ids differ where it
    writes bytes (an unknown word, odd whitespace: see sllm.hf_tokenizer), so its other
    texts are checked on decode only."""
    from tokenizers import Tokenizer as HFTokenizer
    tok = toks[kind]
    hf = HFTokenizer.from_str(json.dumps(to_tokenizer_json(tok)))
    hf.encode_special_tokens = True  # what split_special_tokens in tokenizer_config sets
    pet = "A: Do you have a pet?\nB: Yes, I have a dog (Rex); he's 3.\n"
    known = corpus[:corpus.index("\n", 20_000) + 1]  # whole lines: every word known
    for text in (known, AWKWARD, pet):
        ids = tok.encode(text)
        if kind != "word" or text is known:
            assert hf.encode(text, add_special_tokens=False).ids == ids, text[:80]
        assert hf.decode(ids) == tok.decode(ids), text[:80]
        with_specials = [tok.bos_id or 0, *ids, tok.eos_id or 0]
        assert hf.decode(with_specials) == tok.decode(with_specials)
    if kind in ("word", "char", "bpe"):  # byte fallback (and byte-level BPE): exact text
        assert hf.decode(tok.encode(pet)) == pet


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_json_reads_back_exactly(toks, kind):
    doc = json.loads(json.dumps(to_tokenizer_json(toks[kind])))
    assert from_tokenizer_json(doc).to_dict() == toks[kind].to_dict()


def test_foreign_tokenizers_are_refused_with_the_reason(toks):
    doc = to_tokenizer_json(toks["word"])
    doc["pre_tokenizer"] = {"type": "Whitespace"}
    with pytest.raises(DataError, match="pre-tokenizer sllm did not write"):
        from_tokenizer_json(doc)
    with pytest.raises(DataError, match="Unigram tokenizer .* byte-level BPE"):
        from_tokenizer_json({"model": {"type": "Unigram"}, "pre_tokenizer": {"type": "Metaspace"}})
    with pytest.raises(DataError, match="no 'model'"):
        from_tokenizer_json({"version": "1.0"})


# ---- Hugging Face directories ----------------------------------------------------------------
@pytest.mark.parametrize("kind,tie", [("word", False), ("char", True), ("bpe", False),
                                      ("bpe", True), ("word-lower", True)])
def test_hf_round_trip_is_bit_for_bit(toks, tmp_path, kind, tie):
    m = make_model(toks[kind], tie=tie, activation="relu" if kind == "char" else "gelu")
    export_hf(m, tmp_path / "hf")
    back = import_hf(tmp_path / "hf")
    assert_same_model(m, back)
    assert np.array_equal(m.forward([[1, 2, 3]]), back.forward([[1, 2, 3]]))


def test_hf_files_have_transformers_names_and_layouts(toks, tmp_path):
    m = make_model(toks["bpe"], tie=False)
    files = export_hf(m, tmp_path / "hf")
    assert files == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    w = safetensors_numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
    p = m.parameters()
    assert np.array_equal(w["lm_head.weight"], p["lm_head.weight"].T)  # nn.Linear (V, C)
    assert np.array_equal(w["transformer.wte.weight"], p["wte"])
    assert np.array_equal(w["transformer.h.1.attn.c_attn.weight"], p["h.1.attn.c_attn.weight"])
    assert len(w) == len(p)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["tie_word_embeddings"] is False
    assert (cfg["n_inner"], cfg["activation_function"], cfg["layer_norm_epsilon"]) == \
        (96, "gelu_new", 1e-5)
    tcfg = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert tcfg["eos_token"] == "[EOS]" and tcfg["split_special_tokens"] is True


def test_tied_export_has_no_lm_head_and_f16_halves(toks, tmp_path):
    m = make_model(toks["word"], tie=True)
    export_hf(m, tmp_path / "hf", dtype="f16")
    w = safetensors_numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert "lm_head.weight" not in w
    assert w["transformer.wte.weight"].dtype == np.float16
    assert np.array_equal(w["transformer.wte.weight"], m.parameters()["wte"].astype(np.float16))


def test_gpt2_shaped_checkpoint_imports(toks, tmp_path, corpus):
    """A directory as published GPT-2 checkpoints are: no "transformer." prefix, the
    causal-mask buffers, vocab.json + merges.txt with <|endoftext|> as the last id."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator([corpus], trainers.BpeTrainer(
        vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d = tmp_path / "gpt2"
    d.mkdir()
    hf.model.save(str(d))
    vocab = json.loads((d / "vocab.json").read_text())
    vocab["<|endoftext|>"] = eot = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    cfg = hf_config(make_model(toks["word"]).config)
    cfg.update(vocab_size=eot + 1, tie_word_embeddings=True, activation_function="gelu_pytorch_tanh")
    cfg.pop("n_inner")  # GPT-2's default: 4 * n_embd
    (d / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    tensors = {"wte.weight": rng.standard_normal((eot + 1, 64), np.float32),
               "wpe.weight": rng.standard_normal((24, 64), np.float32),
               "ln_f.weight": np.ones(64, np.float32), "ln_f.bias": np.zeros(64, np.float32)}
    shapes = {"ln_1": [(64,), (64,)], "ln_2": [(64,), (64,)], "attn.c_attn": [(64, 192), (192,)],
              "attn.c_proj": [(64, 64), (64,)], "mlp.c_fc": [(64, 256), (256,)],
              "mlp.c_proj": [(256, 64), (64,)]}
    for i in range(2):
        for part, (ws, bs) in shapes.items():
            tensors[f"h.{i}.{part}.weight"] = rng.standard_normal(ws, np.float32)
            tensors[f"h.{i}.{part}.bias"] = rng.standard_normal(bs, np.float32)
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 24, 24), np.float32))
    safetensors_numpy.save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    m = import_model(d / "model.safetensors")
    assert m.config.ffn_hidden_dim == 256 and m.config.tie_embeddings
    assert np.array_equal(m.parameters()["h.1.mlp.c_fc.weight"], tensors["h.1.mlp.c_fc.weight"])
    tok = tokenizers.from_dict(m.tokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (eot, eot, None)
    assert tok.encode(AWKWARD) == hf.encode(AWKWARD).ids
    assert tok.decode(tok.encode("a!#$b") + [eot]) == "a!#$b"  # ids 0, 2, 3 are text here


def test_bpe_specials_are_validated_and_saved(toks):
    from tokenizers import Tokenizer as HFTokenizer
    hf = HFTokenizer.from_str(toks["bpe"]._hf.to_str())
    tok = tokenizers.BPETokenizer(hf, {"bos": 5, "eos": 6, "pad": None, "unk": None})
    assert tokenizers.from_dict(tok.to_dict()).eos_id == 6
    with pytest.raises(DataError, match="eos id 99999"):
        tokenizers.BPETokenizer(hf, {"bos": 5, "eos": 99999})


@pytest.mark.parametrize("change,message", [
    ({"activation_function": "gelu"}, "activation_function 'gelu'"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon 1e-06"),
    ({"model_type": "mistral"}, "model_type 'mistral'"),
    ({"scale_attn_by_inverse_layer_idx": True}, "does not scale by layer"),
    ({"n_head": 5}, "divisible by num_heads"),
])
def test_what_gpt2_sllm_cannot_run_is_refused(toks, change, message):
    cfg = hf_config(make_model(toks["word"]).config)
    cfg.update(change)
    with pytest.raises(ExportError, match=message):
        config_from_hf(cfg)


def test_broken_directories_are_refused(toks, tmp_path):
    m = make_model(toks["word"])
    d = tmp_path / "hf"
    export_hf(m, d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(ExportError, match="pickle, which sllm never loads"):
        import_hf(d)
    safetensors_numpy.save_file({"other": np.zeros(3, np.float32)}, str(d / "model.safetensors"))
    with pytest.raises(FormatError, match="more than a file of 84 bytes can hold"):
        import_hf(d)
    (d / "model.safetensors").write_bytes(b"garbage" * 100_000)
    with pytest.raises(FormatError, match="not a readable safetensors"):
        import_hf(d)
    with pytest.raises(ExportError, match="no config.json"):
        import_hf(tmp_path)


def test_wrong_shapes_are_refused(toks, tmp_path):
    m = make_model(toks["word"])
    export_hf(m, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["n_inner"] = 100
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="'h.0.mlp.c_fc.weight' has shape .64, 96."):
        import_hf(tmp_path / "hf")


def test_read_hf_tokenizer_without_files_is_none(tmp_path):
    assert read_hf_tokenizer(tmp_path) is None


# ---- GGUF ------------------------------------------------------------------------------------
def _reader(path):
    r = gguf.GGUFReader(str(path))
    return r, {t.name: t for t in r.tensors}


@pytest.mark.parametrize("qtype", ["f32", "f16"])
@pytest.mark.parametrize("tie", [False, True])
def test_gguf_tensors_read_back_bit_for_bit(toks, tmp_path, qtype, tie):
    m = make_model(toks["bpe"], tie=tie)
    export_gguf(m, tmp_path / "m.gguf", qtype)
    _, tensors = _reader(tmp_path / "m.gguf")
    params = m.parameters()
    assert set(tensors) == {gguf_name(n) for n in params}
    assert ("output.weight" in tensors) is not tie
    for name, p in params.items():
        t = tensors[gguf_name(name)]
        want = p if p.ndim == 1 or name in ("wte", "wpe") else p.T  # llama.cpp's (out, in)
        as_f16 = qtype == "f16" and p.ndim == 2 and name != "wpe"
        want = want.astype(np.float16) if as_f16 else want
        assert t.tensor_type.name == ("F16" if as_f16 else "F32"), name
        got = np.asarray(t.data)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert np.array_equal(got.view(np.uint8), np.ascontiguousarray(want).view(np.uint8)), name


def test_gguf_metadata_is_what_llama_cpp_reads(toks, tmp_path):
    tok = toks["bpe"]
    m = make_model(tok)
    export_gguf(m, tmp_path / "m.gguf")
    r, _ = _reader(tmp_path / "m.gguf")
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f["general.architecture"] == "gpt2"
    assert (f["gpt2.context_length"], f["gpt2.embedding_length"], f["gpt2.feed_forward_length"],
            f["gpt2.block_count"], f["gpt2.attention.head_count"]) == (24, 64, 96, 2, 4)
    assert f["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    hf = json.loads(tok._hf.to_str())
    assert f["tokenizer.ggml.tokens"][:4] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    assert f["tokenizer.ggml.tokens"][300] == tok._hf.id_to_token(300)
    assert len(f["tokenizer.ggml.tokens"]) == tok.vocab_size
    assert f["tokenizer.ggml.token_type"][:5] == [3, 3, 3, 3, 1]
    assert f["tokenizer.ggml.merges"][0] == " ".join(hf["model"]["merges"][0]) \
        if not isinstance(hf["model"]["merges"][0], str) else hf["model"]["merges"][0]
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"]) == (2, 3)


@pytest.mark.parametrize("kind", ["word", "word-unk", "char", "char-unk"])
def test_gguf_word_and_char_vocabularies_are_sentencepiece(toks, tmp_path, kind):
    """Word and char vocabularies go out as llama.cpp's "llama" (SentencePiece) kind: the
    byte tokens as BYTE, [UNK] UNKNOWN, the other specials CONTROL, spaces as U+2581; the
    export says how llama.cpp's own tokenizer differs (tests/interop runs llama.cpp)."""
    tok = toks[kind]
    with pytest.warns(UserWarning, match=f"{kind[:4]} vocabulary"):
        export_gguf(make_model(tok), tmp_path / "m.gguf")
    r, _ = _reader(tmp_path / "m.gguf")
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("tokenizer.")}
    assert f["tokenizer.ggml.model"] == "llama" and len(f["tokenizer.ggml.tokens"]) == tok.vocab_size
    types, pieces = f["tokenizer.ggml.token_type"], f["tokenizer.ggml.tokens"]
    first = 4 if kind.startswith("word") else 1
    if tok.byte_fallback:
        assert pieces[first:first + 256] == list(tokenizers.BYTE_TOKENS)
        assert set(types[first:first + 256]) == {6}
    assert types[tok.unk_id] == 2 and types[-1] == 1
    if kind.startswith("word"):
        assert types[:4] == [3, 2, 3, 3] and "\u2581the" in pieces and "." in pieces
    else:
        assert "\u2581" in pieces and " " not in pieces
    assert import_gguf(tmp_path / "m.gguf").tokenizer == tok.to_dict()


@pytest.mark.parametrize("kind,tie", [("bpe", False), ("word", True)])
def test_gguf_round_trip_is_bit_for_bit(toks, tmp_path, kind, tie):
    m = make_model(toks[kind], tie=tie)
    export_gguf(m, tmp_path / "m.gguf")
    assert_same_model(m, import_gguf(tmp_path / "m.gguf"))


def test_gguf_f16_round_trip_rounds_once(toks, tmp_path):
    m = make_model(toks["bpe"])
    export_gguf(m, tmp_path / "m.gguf", "f16")
    back = import_gguf(tmp_path / "m.gguf")
    for name, p in m.parameters().items():
        want = p if p.ndim == 1 or name == "wpe" else p.astype(np.float16).astype(np.float32)
        assert np.array_equal(back.parameters()[name], want), name


def test_gguf_refuses_relu_and_unknown_types(toks, tmp_path):
    with pytest.raises(ExportError, match="activation is 'relu'"):
        export_gguf(make_model(toks["word"], activation="relu"), tmp_path / "m.gguf")
    with pytest.raises(ExportError, match="q5_k"):
        export_gguf(make_model(toks["word"]), tmp_path / "m.gguf", "q5_k")
    assert not (tmp_path / "m.gguf").exists()
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(ExportError, match="not a readable GGUF"):
        import_gguf(tmp_path / "bad.gguf")


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_gguf_quantized_blocks_are_ggml_bytes(toks, tmp_path, qtype):
    quant = pytest.importorskip("sllm.quant")
    m = make_model(toks["bpe"], tie=False, C=64)
    counts = export_gguf(m, tmp_path / "m.gguf", qtype)
    _, tensors = _reader(tmp_path / "m.gguf")
    for name, p in m.parameters().items():
        t = tensors[gguf_name(name)]
        want = p if p.ndim == 1 or name in ("wte", "wpe") else p.T
        if p.ndim == 1 or name == "wpe":
            assert t.tensor_type.name == "F32"
            continue
        if want.shape[-1] % 32:  # c_proj of the MLP has rows of 96: f16
            assert t.tensor_type.name == "F16", name
            continue
        assert t.tensor_type.name == qtype.upper(), name
        blocks = quant.quantize(np.ascontiguousarray(want), qtype)
        assert np.array_equal(np.asarray(t.data).reshape(blocks.shape), blocks), name
    assert counts[qtype] >= 6
    back = import_gguf(tmp_path / "m.gguf")  # dequantized: close, not equal
    err = np.abs(back.parameters()["h.0.attn.c_attn.weight"] - m.parameters()["h.0.attn.c_attn.weight"])
    assert 0 < err.max() < (0.02 if qtype == "q8_0" else 0.2)


# ---- the command line ------------------------------------------------------------------------
def test_cli_export_import_and_init_from(toks, tmp_path, corpus):
    from typer.testing import CliRunner

    from sllm.cli import app
    runner = CliRunner()
    m = make_model(toks["bpe"], tie=True)
    m.save(tmp_path / "m.sllm")
    (tmp_path / "corpus.txt").write_text(corpus)
    for args in (["export", tmp_path / "m.sllm", "--to", "hf", "-o", tmp_path / "hf"],
                 ["export", tmp_path / "m.sllm", "--to", "gguf", "-o", tmp_path / "m.gguf"],
                 ["import", tmp_path / "hf", "-o", tmp_path / "back.sllm"],
                 ["import", tmp_path / "m.gguf", "-o", tmp_path / "back2.sllm"],
                 ["train", "--init-from", tmp_path / "back.sllm", "--corpus", tmp_path / "corpus.txt",
                  "--steps", 3, "--batch-size", 2, "--eval-every", 0, "--eval-batches", 1,
                  "--out", tmp_path / "run", "--backend", "numpy", "-q"]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    assert "tensors: 28 f32" in runner.invoke(
        app, ["export", str(tmp_path / "m.sllm"), "--to", "gguf", "-o", str(tmp_path / "x.gguf")]).output
    for path in ("back.sllm", "back2.sllm"):
        assert_same_model(m, sllm.load(tmp_path / path))
    tuned = sllm.load(tmp_path / "run" / "model.sllm")
    assert tuned.tokenizer == m.tokenizer and tuned.config == m.config
    assert not np.array_equal(tuned.parameters()["wte"], m.parameters()["wte"])
    bad = runner.invoke(app, ["export", str(tmp_path / "m.sllm"), "--to", "onnx", "-o", "x"])
    assert bad.exit_code == 1 and "--to must be one of hf, gguf" in bad.output
    clash = runner.invoke(app, ["train", "--init-from", str(tmp_path / "back.sllm"),
                                "--config", "small-model", "--out", str(tmp_path / "r2")])
    assert clash.exit_code == 1 and "drop --config" in clash.output


def test_a_model_without_tokenizer_exports_weights_only(toks, tmp_path):
    m = make_model(toks["word"])
    m.tokenizer = None
    assert export_hf(m, tmp_path / "hf") == ["config.json", "model.safetensors"]
    assert import_hf(tmp_path / "hf").tokenizer is None
    export_gguf(m, tmp_path / "m.gguf")
    back = import_gguf(tmp_path / "m.gguf")
    assert back.tokenizer is None
    assert np.array_equal(back.parameters()["wte"], m.parameters()["wte"])


@pytest.mark.parametrize("qtype", ["q8_0", "q4_1"])
def test_a_quantized_model_keeps_its_blocks_in_gguf(toks, tmp_path, qtype):
    m = make_model(toks["bpe"], tie=True)
    m.quantize(qtype)
    counts = export_gguf(m, tmp_path / "m.gguf")
    _, tensors = _reader(tmp_path / "m.gguf")
    for name, q in m.quantized_weights().items():
        t = tensors[gguf_name(name)]
        assert t.tensor_type.name == qtype.upper(), name
        assert np.array_equal(np.asarray(t.data).reshape(np.shape(q.data)), np.asarray(q.data)), name
    assert counts[qtype] == len(m.quantized_weights()) and set(counts) == {qtype, "f32"}
    with pytest.raises(ExportError, match=f"quantized to {qtype}"):
        export_gguf(m, tmp_path / "x.gguf", "f16")
    with pytest.raises(ExportError, match="GPT2LMHeadModel holds float weights"):
        export_hf(m, tmp_path / "hf")
