"""A llama model's whole life: trained, saved, loaded, quantized, saved again, then served
with continuous batching, every concurrent answer equal to generating it alone."""
import threading

import numpy as np
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from serving import ThreadServer  # noqa: E402 - after pytest.importorskip

import sllm  # noqa: E402 - after pytest.importorskip
from sllm import backends  # noqa: E402 - after pytest.importorskip
from sllm.corpus import generate_corpus  # noqa: E402 - after pytest.importorskip
from sllm.generate import encode_prompt, stream_text  # noqa: E402 - after pytest.importorskip
from sllm.optim import AdamW  # noqa: E402 - after pytest.importorskip
from sllm.tokenizer import WordTokenizer, from_dict  # noqa: E402 - after pytest.importorskip

PROMPTS = ["the cat", "she said that", "a small boat on the river", "one day", "he"]


def test_llama_train_save_load_quantize_serve(tmp_path):
    text = generate_corpus(20_000, seed=2)
    tok = WordTokenizer.train(text, 300)
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=32, num_layers=2,
                           num_heads=4, num_kv_heads=2, ffn_hidden_dim=64, dropout=0.0,
                           max_seq_len=48, architecture="llama")
    model = sllm.SLLM(cfg, seed=1)
    ids = np.array(tok.encode(text), np.int64)
    opt, rng, losses = AdamW(model, lr=3e-3), np.random.default_rng(0), []
    for _ in range(15):
        starts = rng.integers(0, len(ids) - 33, 8)
        batch = np.stack([ids[s:s + 33] for s in starts])
        losses.append(model.forward_backward(batch[:, :-1], batch[:, 1:]))
        opt.step()
    assert losses[-1] < losses[0]
    model.tokenizer = tok.to_dict()
    model.save(tmp_path / "f32.sllm")
    loaded = sllm.load(tmp_path / "f32.sllm")
    for name, p in model.parameters().items():
        np.testing.assert_array_equal(loaded.parameters()[name], p)
    loaded.quantize("q4_1")
    loaded.save(tmp_path / "q4_1.sllm")

    server = ThreadServer(tmp_path / "q4_1.sllm", max_batch=4)
    try:
        alone = sllm.load(tmp_path / "q4_1.sllm", backend=backends.available()[0])
        assert alone.qtype == "q4_1" and alone.config.architecture == "llama"
        results = {}

        def ask(i, prompt):
            results[i] = server.client().completions.create(
                model="tiny", prompt=prompt, max_tokens=16, temperature=0).choices[0].text
        threads = [threading.Thread(target=ask, args=(i, p)) for i, p in enumerate(PROMPTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        want = {i: "".join(stream_text(alone, from_dict(alone.tokenizer),
                                       encode_prompt(tok, p, warn=False), 16, temperature=0))
                for i, p in enumerate(PROMPTS)}
        assert results == want
    finally:
        server.stop()
