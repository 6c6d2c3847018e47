"""sllm's Hugging Face export against transformers + torch themselves (`make test-interop`).

For a tied and an untied model, with a word and a byte-level BPE tokenizer (and a char one):
AutoTokenizer on the exported directory gives sllm's ids, GPT2LMHeadModel gives sllm's
logits (max abs difference <= 1e-4 in f32) and the same greedy continuation.
Skipped where torch or transformers is missing (the main test environment).
"""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import sllm  # noqa: E402 - after pytest.importorskip
from sllm import tokenizer as tokenizers  # noqa: E402 - after pytest.importorskip
from sllm.corpus import generate_corpus  # noqa: E402 - after pytest.importorskip
from sllm.hf import export_hf  # noqa: E402 - after pytest.importorskip
from sllm.optim import AdamW  # noqa: E402 - after pytest.importorskip

TEXT = ("A: What is your favorite  subject?\r\nB: I don't know… maybe music!\n\n"
        "日本語も少し。 [EOS] the end (really).\n")


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(60_000, seed=5) + "\n日本語も少し。"


def trained_model(tok, corpus, tie, activation="gelu", steps=60):
    """A small model trained briefly, so that its predictions are peaked (greedy is stable)."""
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=64, num_layers=2,
                           num_heads=4, ffn_hidden_dim=160, dropout=0.0, max_seq_len=64,
                           activation=activation, tie_embeddings=tie)
    model = sllm.SLLM(cfg, backend="numpy", seed=1)
    ids = tok.encode_array(corpus).astype(np.int64)
    rng = np.random.default_rng(0)
    opt = AdamW(model, lr=3e-3)
    for _ in range(steps):
        starts = rng.integers(0, len(ids) - 33, size=8)
        batch = np.stack([ids[s:s + 33] for s in starts])
        model.forward_backward(batch[:, :-1], batch[:, 1:])
        opt.step()
    model.tokenizer = tok.to_dict()
    return model.eval()


@pytest.mark.parametrize("kind,tie", [("word", False), ("word", True), ("bpe", False),
                                      ("bpe", True), ("char", False)])
def test_transformers_matches_sllm(tmp_path, corpus, kind, tie):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = tokenizers.train(kind, corpus, {"word": 600, "bpe": 500, "char": None}[kind])
    model = trained_model(tok, corpus, tie, activation="relu" if kind == "char" else "gelu")
    export_hf(model, tmp_path / "hf")

    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tok.encode(TEXT)
    # A byte-fallback word vocabulary spells unknown words and odd spacing in bytes, which
    # WordLevel cannot (sllm/hf_tokenizer.py): its ids are compared on known words.
    words = [w for w in getattr(tok, "tokens", [])[260:] if w.isalpha()][:40]
    same = TEXT if kind != "word" else "A: " + " ".join(words) + ".\nB: " + ", ".join(words[:9]) + "?\n"
    assert hf_tok(same, add_special_tokens=False)["input_ids"] == tok.encode(same)
    assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids)

    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr() or tie
    tokens = np.array([ids[:60]])
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    ours = model.forward(tokens)
    print(f"{kind} tie={tie}: max |logits diff| = {np.abs(theirs - ours).max():.2e}")
    assert np.abs(theirs - ours).max() <= 1e-4

    prompt = ids[:20]
    want = model.generate(prompt, 24, temperature=0, eos_id=tok.eos_id)
    with torch.no_grad():
        got = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                          eos_token_id=tok.eos_id, pad_token_id=tok.pad_id or 0)
    assert got[0].tolist() == want


def test_spm_tokenizer_in_transformers(tmp_path, corpus):
    """An spm vocabulary (llama2.c's tokenizer.bin kind) exported with a llama model:
    transformers' AutoTokenizer gives sllm's ids and, after [BOS], sllm's text; the
    directory imports back with the same tokenizer ids."""
    from sllm.export import export_model, import_model
    rng = np.random.default_rng(0)
    pieces = ["<unk>", "<s>", "</s>", *tokenizers.BYTE_TOKENS, " "]
    for _ in range(800):
        at = int(rng.integers(len(corpus) - 6))
        pieces.append(corpus[at:at + int(rng.integers(2, 6))])
    pieces = list(dict.fromkeys(pieces))
    scores = [0.0] * 259 + [-float(i) / 7 for i in range(len(pieces) - 259)]
    tok = tokenizers.SPMTokenizer(pieces, scores)
    cfg = sllm.ModelConfig(architecture="llama", vocab_size=tok.vocab_size, embedding_dim=32,
                           num_layers=1, num_heads=2, ffn_hidden_dim=64, max_seq_len=64,
                           dropout=0.0)
    model = sllm.SLLM(cfg, backend="numpy", seed=1)
    model.tokenizer = tok.to_dict()
    export_model(model, "hf", tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    back = tokenizers.from_dict(import_model(tmp_path / "hf").tokenizer)
    for text in (TEXT, corpus[:400], "  two  spaces", "<s> typed </s>"):
        ids = tok.encode(text)
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids == back.encode(text)
        assert hf_tok.decode(ids) == tok.decode([tok.bos_id, *ids]) == text
