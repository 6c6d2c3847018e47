"""sllm's GGUF export against llama.cpp itself (llama-cpp-python, built portably into
.venv-interop by `make test-interop`).

Word and char models (byte fallback and without) load as SentencePiece vocabularies and,
given sllm's ids, give sllm's logits (f32, within 1e-3); llama.cpp's own tokenizer gives
sllm's ids and text for char with byte fallback and for BPE; q8_0, q4_0 and q4_1 GPT-2
files give the greedy tokens of sllm's own quantized model.

Llama models (GQA and MHA, tied and untied) exported as GGUF `llama`: llama.cpp's logits
given sllm's ids equal sllm's (f32 within 1e-3; f16 against sllm's model with its
matrices rounded to f16), q8_0 and q4_0 files give the greedy tokens of sllm's own
quantized model, and an spm vocabulary (llama2.c's tokenizer.bin) tokenizes and
detokenizes in llama.cpp as sllm does.
"""
import warnings

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

import sllm  # noqa: E402 - after pytest.importorskip
from sllm import tokenizer as tokenizers  # noqa: E402 - after pytest.importorskip
from sllm.corpus import generate_corpus  # noqa: E402 - after pytest.importorskip
from sllm.gguf_file import export_gguf  # noqa: E402 - after pytest.importorskip

TEXT = "A: Do you have a pet?\nB: Yes, a dragon named Zyx (really)!  日本語 🙂\n"


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(40_000, seed=5)


def _model(tok, seed=1, C=64):
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=C, num_layers=2,
                           num_heads=4, ffn_hidden_dim=128, dropout=0.0, max_seq_len=96)
    model = sllm.SLLM(cfg, backend="numpy", seed=seed)
    for name, p in model.parameters().items():  # peaked predictions: a stable argmax
        if name in ("wte", "lm_head.weight"):
            p *= 8.0
    model.tokenizer = tok.to_dict()
    return model.eval()


def _llama(path, n_ctx):
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False,
                           n_threads=2, n_batch=n_ctx)


def _logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


@pytest.mark.parametrize("kind,fallback", [("word", True), ("word", False), ("char", True),
                                           ("char", False), ("bpe", True)])
def test_llama_cpp_gives_sllm_logits(tmp_path, corpus, kind, fallback):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = tokenizers.train(kind, corpus, {"word": 600, "char": None, "bpe": 500}[kind],
                               byte_fallback=fallback)
        model = _model(tok)
        export_gguf(model, tmp_path / "m.gguf")
    sample = TEXT if fallback else corpus[:300]
    ids = tok.encode(sample)[:90]
    llm = _llama(tmp_path / "m.gguf", 96)
    assert llm.n_vocab() == tok.vocab_size
    diff = np.abs(_logits(llm, ids) - model.forward([ids])[0]).max()
    print(f"{kind} byte_fallback={fallback}: {len(ids)} tokens, max |logits diff| {diff:.2e}")
    assert diff <= 1e-3
    if kind in ("char", "bpe") and fallback:  # llama.cpp's tokenizer: sllm's ids, sllm's text
        assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == tok.encode(TEXT)
        assert llm.detokenize(tok.encode(TEXT)).decode() == TEXT
    if kind == "word":  # the detokenizer puts sllm's spaces back between known words (not after "\n")
        words = [w for w in tok.tokens[len(tok.tokens) - 300:] if w.isalpha()][:40]
        plain = "A: " + " ".join(words) + ", " + " ".join(words[:5]) + ". B: " + words[0] + "?"
        assert llm.detokenize(tok.encode(plain)).decode().lstrip() == plain


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_quantized_gguf_greedy_tokens_equal_sllm(tmp_path, corpus, qtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = tokenizers.train("bpe", corpus, 500)
        model = _model(tok, C=64)
        model = model.quantize(qtype) or model  # in place (None) or a new model
        export_gguf(model, tmp_path / f"m-{qtype}.gguf", qtype=qtype)
    prompt = tok.encode("Once upon a time, there was a")
    want = model.generate(prompt, 24, temperature=0)
    llm = _llama(tmp_path / f"m-{qtype}.gguf", 96)
    got = list(prompt)
    llm.reset()
    llm.eval(prompt)
    for _ in range(24):
        got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([got[-1]])
    diff = np.abs(_logits(llm, want) - model.forward([want])[0]).max()
    print(f"{qtype}: greedy equal {got == want}; max |logits diff| {diff:.2e}")
    assert got == want


def _llama_model(tok, kv, tie, seed=1):
    cfg = sllm.ModelConfig(architecture="llama", vocab_size=tok.vocab_size, embedding_dim=64,
                           num_layers=2, num_heads=4, num_kv_heads=kv, ffn_hidden_dim=128,
                           max_seq_len=96, dropout=0.0, tie_embeddings=tie, rope_theta=5000.0)
    model = sllm.SLLM(cfg, backend="numpy", seed=seed)
    for name, p in model.parameters().items():  # peaked predictions: a stable argmax
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            p *= 8.0
    model.tokenizer = tok.to_dict()
    return model.eval()


LLAMA_SHAPES = [(2, False), (4, True), (1, False), (4, False)]  # kv heads (of 4), tied


@pytest.fixture(scope="module")
def char_tok(corpus):
    return tokenizers.train("char", corpus, None)


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("kv,tie", LLAMA_SHAPES)
def test_llama_gguf_logits_equal_sllm(tmp_path, corpus, char_tok, dtype, kv, tie):
    model = _llama_model(char_tok, kv, tie)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_gguf(model, tmp_path / "m.gguf", qtype=dtype)
    if dtype == "f16":  # the file's rounding: every matrix f16, the norms f32
        for p in model.parameters().values():
            if p.ndim == 2:
                p[...] = p.astype(np.float16)
    ids = char_tok.encode(corpus[:90])
    llm = _llama(tmp_path / "m.gguf", 96)
    diff = np.abs(_logits(llm, ids) - model.forward([ids])[0]).max()
    print(f"llama kv={kv} tied={tie} {dtype}: {len(ids)} tokens, max |logits diff| {diff:.2e}")
    assert diff <= (1e-3 if dtype == "f32" else 1e-2)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
@pytest.mark.parametrize("kv,tie", LLAMA_SHAPES[:2])
def test_llama_quantized_gguf_greedy_tokens_equal_sllm(tmp_path, char_tok, qtype, kv, tie):
    model = _llama_model(char_tok, kv, tie)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = model.quantize(qtype) or model  # sllm's own quantized model's blocks
        export_gguf(model, tmp_path / "m.gguf", qtype=qtype)
    prompt = char_tok.encode("Once upon a time, there was a")
    want = model.generate(prompt, 24, temperature=0)
    llm = _llama(tmp_path / "m.gguf", 96)
    got = list(prompt)
    llm.reset()
    llm.eval(prompt)
    for _ in range(24):
        got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([got[-1]])
    diff = np.abs(_logits(llm, want) - model.forward([want])[0]).max()
    print(f"llama kv={kv} tied={tie} {qtype}: greedy equal {got == want}; max |logits diff| "
          f"{diff:.2e}")
    assert got == want


def test_spm_vocabulary_tokenizes_in_llama_cpp_as_sllm(tmp_path, corpus):
    """A SentencePiece-like vocabulary (every character of a piece is a piece, as
    SentencePiece trains them): llama.cpp's tokenizer merges by score as run.c does."""
    rng = np.random.default_rng(0)
    pieces = ["<unk>", "<s>", "</s>", *tokenizers.BYTE_TOKENS, " "]
    for _ in range(600):
        at = int(rng.integers(len(corpus) - 6))
        pieces.append(corpus[at:at + int(rng.integers(2, 6))])
    pieces = list(dict.fromkeys(pieces))
    pieces += sorted({c for p in pieces[259:] for c in p} - set(pieces))
    scores = [0.0] * 259 + [-float(rng.integers(1, 60)) / 4 for _ in pieces[259:]]
    tok = tokenizers.SPMTokenizer(pieces, scores)
    model = _llama_model(tok, 2, False)
    export_gguf(model, tmp_path / "m.gguf")
    llm = _llama(tmp_path / "m.gguf", 96)
    for text in (corpus[:300], TEXT, "  two  spaces", corpus[1000:1200].upper()):
        ids = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
        assert llm.detokenize([tok.bos_id, *ids]).decode() == tok.decode([tok.bos_id, *ids]) == text
    ids = tok.encode(corpus[:90])
    assert np.abs(_logits(llm, ids) - model.forward([ids])[0]).max() <= 1e-3


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_sllm_imports_a_llama_gguf_with_llama_cpps_logits(tmp_path, corpus, char_tok, dtype):
    """`sllm import` of a GGUF llama file: the imported model's logits are llama.cpp's on
    the same file (q8_0: the imported quantized model's greedy tokens are llama.cpp's)."""
    from sllm.export import import_model
    model = _llama_model(char_tok, 2, False, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_gguf(model, tmp_path / "m.gguf", qtype=dtype)
    back = import_model(tmp_path / "m.gguf")
    assert back.qtype == (None if dtype == "f32" else dtype)
    ids = back.generate(char_tok.encode("Once upon a time"), 24, temperature=0)
    llm = _llama(tmp_path / "m.gguf", 96)
    theirs = _logits(llm, ids)
    diff = np.abs(theirs - back.forward([ids])[0]).max()
    print(f"import {dtype}: max |logits diff| vs llama.cpp {diff:.2e}")
    assert (theirs.argmax(-1)[15:-1] == np.array(ids[16:])).all()
    assert diff <= (1e-3 if dtype == "f32" else 5e-2)
