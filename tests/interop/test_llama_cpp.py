"""sllm's GGUF export against llama.cpp itself (llama-cpp-python, built portably into
.venv-interop by `make test-interop`).

Word and char models (byte fallback and without) load as SentencePiece vocabularies and,
given sllm's ids, give sllm's logits (f32, within 1e-3); llama.cpp's own tokenizer gives
sllm's ids and text for char with byte fallback and for BPE; q8_0, q4_0 and q4_1 GPT-2
files give the greedy tokens of sllm's own quantized model.
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
