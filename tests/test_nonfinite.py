"""NaN is never an answer: a q8_0 model with one NaN scale
made `info` say "checksums ok", `eval` print `loss nan` and exit 0, `generate` print only
the prompt, and `train --init-from` report a divergence; `temperature: 5e-324` gave 500
"Probabilities contain NaN"; `export --dtype f16` wrote inf for a weight of 70,000."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import sllm
from sllm import tokenizer as tokenizers
from sllm.cli import app
from sllm.errors import FormatError
from sllm.evaluate import evaluate
from sllm.finite import NonFiniteError, check_weights, first_nonfinite
from sllm.sampler import sample_next

TEXT = "the cat sat on the mat. the dog sat on the log. " * 20


def _model(tmp_path=None):
    tok = tokenizers.WordTokenizer.train(TEXT, 12, byte_fallback=False)
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=32, num_layers=1,
                           num_heads=2, ffn_hidden_dim=64, dropout=0.0, max_seq_len=16)
    m = sllm.SLLM(cfg, backend="numpy", seed=1)
    m.tokenizer = tok.to_dict()
    return m


def _nan_scale_file(tmp_path):
    m = _model()
    m.quantize("q8_0")
    q = m.quantized_weights()["h.0.mlp.c_proj.weight"]
    blocks = q.data.view(sllm.quant.BLOCK_Q8_0)
    blocks["d"][5, 1] = np.float16("nan")
    m.save(tmp_path / "q.sllm")
    return tmp_path / "q.sllm"


def test_a_nan_block_scale_is_refused_on_load_with_its_place(tmp_path):
    path = _nan_scale_file(tmp_path)
    with pytest.raises(FormatError, match=r"'h.0.mlp.c_proj.weight' \(q8_0\) has a NaN block "
                                          r"scale at \(row, block\) \[5, 1\]"):
        sllm.load(path)
    (tmp_path / "corpus.txt").write_text(TEXT)
    runner = CliRunner()
    for args in (["info", path], ["eval", path, "--corpus", tmp_path / "corpus.txt"],
                 ["generate", path, "--prompt", "the cat", "--max-tokens", "3"],
                 ["train", "--init-from", path, "--corpus", tmp_path / "corpus.txt",
                  "--steps", "1", "--out", tmp_path / "run", "-q"]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 1, result.output
        assert "c_proj.weight" in result.output and "NaN" in result.output, result.output
        assert "checksums" not in result.output and "diverged" not in result.output


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_float_weight_is_refused_naming_tensor_and_index(tmp_path, value):
    m = _model()
    m.parameters()["h.0.attn.c_proj.weight"][3, 7] = value
    m.save(tmp_path / "m.sllm")
    with pytest.raises(FormatError, match=r"'h.0.attn.c_proj.weight' holds .* at index \[3, 7\]"):
        sllm.load(tmp_path / "m.sllm")
    with pytest.raises(FormatError, match="cannot save as f16"):
        m.save(tmp_path / "m16.sllm", dtype="f16")
    m.save_json(tmp_path / "m.json")
    with pytest.raises(FormatError, match=r"c_proj.weight' holds .*\[3, 7\]"):
        sllm.load_json(tmp_path / "m.json")


def test_imports_refuse_non_finite_weights_by_name(tmp_path):
    from sllm.export import export_model, import_model
    m = _model()
    export_model(m, "hf", tmp_path / "hf")
    export_model(m, "gguf", tmp_path / "m.gguf")
    from safetensors.numpy import load_file, save_file
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    weights["transformer.h.0.ln_1.weight"][4] = np.nan
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FormatError, match=r"'h.0.ln_1.weight' holds NaN at index \[4\]"):
        import_model(tmp_path / "hf")
    m.parameters()["wpe"][2, 0] = np.inf
    export_model(m, "gguf", tmp_path / "inf.gguf")
    with pytest.raises(FormatError, match=r"'wpe' holds \+inf at index \[2, 0\]"):
        import_model(tmp_path / "inf.gguf")


def test_eval_and_generation_stop_at_the_first_non_finite_logits():
    m = _model()
    m.parameters()["ln_f.bias"][2] = np.nan  # every position's logits become NaN
    ids = np.arange(40) % m.config.vocab_size
    with pytest.raises(NonFiniteError, match=r"eval windows 0\.\.2: the model's logits hold "
                                             r"NaN at index \[0, 0, 0\]"):
        evaluate(m, ids)
    with pytest.raises(NonFiniteError, match="next-token logits"):
        m.generate([1, 2], 3)


@pytest.mark.parametrize("temperature", [5e-324, 1e-310, 2.2250738585072014e-308, 1e-300,
                                         1e-30, 1e-3, 1.0, 1e6])
def test_sampling_is_safe_for_every_valid_temperature(temperature):
    rng = np.random.default_rng(0)
    logits = np.array([-3.5, 2.0, 0.5, -np.inf, 2.0 - 1e-9, -80.0], np.float32)
    for top_k, top_p, min_p in ((None, None, None), (2, None, None), (None, 0.5, 0.1)):
        token = sample_next(logits, rng, temperature, top_k, top_p, min_p)
        assert 0 <= token < logits.size and token != 3
    if temperature < 1e-300:  # the limit of a vanishing temperature is the greedy choice
        assert sample_next(logits, rng, temperature) == 1
        negative = logits - 10.0  # the largest is negative: logits / T overflow to -inf
        assert sample_next(negative, rng, temperature) == 1


def test_export_f16_refuses_a_weight_beyond_f16_like_convert(tmp_path):
    m = _model()
    m.parameters()["h.0.mlp.c_proj.weight"][0, 0] = 70_000.0
    m.save(tmp_path / "big.sllm")
    runner = CliRunner()
    for args in (["export", "--to", "hf", "-o", tmp_path / "hf"],
                 ["export", "--to", "gguf", "-o", tmp_path / "m.gguf"],
                 ["convert", tmp_path / "big16.sllm"]):
        result = runner.invoke(app, [args[0], str(tmp_path / "big.sllm"),
                                     *map(str, args[1:]), "--dtype", "f16"])
        assert result.exit_code == 1, result.output
        assert "c_proj.weight" in result.output and "70000" in result.output
    assert not (tmp_path / "hf").exists() and not (tmp_path / "m.gguf").exists()


def test_first_nonfinite_reads_in_chunks_and_finds_the_first():
    big = np.zeros((3, (1 << 20) + 5), np.float32)
    assert first_nonfinite(big) is None
    big[2, 7] = np.inf
    big[2, 9] = np.nan
    assert first_nonfinite(big) == (2, 7)
    assert first_nonfinite(np.zeros(4, np.int32)) is None
    check_weights({"a": np.ones(3, np.float16)}, "x")


def test_first_nonfinite_finds_each_kind_in_a_row():
    assert first_nonfinite(np.full(8, 3e38, np.float32)) is None  # large, finite
    for bad in (np.nan, np.inf, -np.inf):
        row = np.ones(400, np.float32)
        row[123] = bad
        assert first_nonfinite(row) == (123,)
