"""`sllm import` of GGUF `llama` files: sllm's own llama exports come back with the same
logits (f32 bit for bit, f16 and the quantized types within their rounding), a file
written by gguf's writer the way llama.cpp's convert_hf_to_gguf.py writes a
LlamaForCausalLM (its q/k permutation done here, independently) gives the logits of the
unpermuted weights, and what sllm's llama cannot run is refused by name."""
from __future__ import annotations

import numpy as np
import pytest

import sllm
from sllm.errors import SLLMError
from sllm.export import export_model, import_model
from sllm.hf_llama import llama_hf_tensors

gguf = pytest.importorskip("gguf")

IDS = [[1, 5, 7, 3, 9, 22, 31, 0, 2, 2, 17, 39]]
# Max |logit difference| allowed after a GGUF round trip: each type's rounding of the weights.
TOLERANCE = {"f32": 0.0, "f16": 1e-3, "q8_0": 2e-2, "q4_0": 0.3, "q4_1": 0.3}


def _llama(tie=False, kv=2, seed=1):
    cfg = sllm.ModelConfig(architecture="llama", vocab_size=40, embedding_dim=64, num_layers=2,
                           num_heads=4, num_kv_heads=kv, ffn_hidden_dim=96, max_seq_len=16,
                           dropout=0.0, tie_embeddings=tie, rope_theta=5000.0, norm_eps=1e-6)
    return sllm.SLLM(cfg, backend="numpy", seed=seed).eval()


@pytest.mark.parametrize("qtype", ["f32", "f16", "q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("tie,kv", [(False, 2), (True, 1), (False, 4)])
def test_sllm_llama_gguf_imports_with_the_same_logits(tmp_path, qtype, tie, kv):
    model = _llama(tie, kv)
    export_model(model, "gguf", tmp_path / "m.gguf", dtype=qtype)
    back = import_model(tmp_path / "m.gguf")
    assert back.config.to_dict() == model.config.to_dict()
    diff = np.abs(back.forward(IDS)[0] - model.forward(IDS)[0]).max()
    assert diff <= TOLERANCE[qtype], diff
    if qtype == "f32":
        for name, p in model.parameters().items():
            np.testing.assert_array_equal(back.parameters()[name], p, err_msg=name)
    if qtype.startswith("q"):  # the file's blocks, kept: sllm's own quantized model
        own = model.quantize(qtype) or model
        assert back.qtype == qtype
        _assert_same_blocks(back, own)
        np.testing.assert_array_equal(back.forward(IDS)[0], own.forward(IDS)[0])
        export_model(own, "gguf", tmp_path / "q.gguf")  # and a quantized model exports
        _assert_same_blocks(import_model(tmp_path / "q.gguf"), own)


def _assert_same_blocks(a, b):
    qa, qb = a.quantized_weights(), b.quantized_weights()
    assert set(qa) == set(qb)
    for name in qa:
        np.testing.assert_array_equal(np.asarray(qa[name].data), np.asarray(qb[name].data), name)
    for name, p in b.parameters().items():
        np.testing.assert_array_equal(a.parameters()[name], p, err_msg=name)


def test_a_mix_of_block_types_is_dequantized(tmp_path):
    """ffn_down's rows (80 values) are not whole q8_0 blocks: f16 in the file, so the
    types are mixed and the import is a float model."""
    model = _llama()
    cfg = model.config.to_dict()
    odd = sllm.SLLM({**cfg, "ffnHiddenDim": 80}, backend="numpy", seed=1).eval()
    export_model(odd, "gguf", tmp_path / "m.gguf", dtype="q8_0")
    back = import_model(tmp_path / "m.gguf")
    assert back.qtype is None
    assert np.abs(back.forward(IDS)[0] - odd.forward(IDS)[0]).max() <= TOLERANCE["q8_0"]


def _convert_hf_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute, as written there."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _write_foreign(path, model, extra=None, drop=None, qtype=None, spm=False):
    """A GGUF llama file by gguf's writer alone, named and permuted as llama.cpp's
    converter does, with a SentencePiece-style vocabulary of its own (no sllm.* keys)."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("foreign")
    keys = {"context_length": cfg.max_seq_len, "embedding_length": cfg.embedding_dim,
            "feed_forward_length": cfg.ffn_hidden_dim, "block_count": cfg.num_layers,
            "attention.head_count": cfg.num_heads, "attention.head_count_kv": cfg.kv_heads,
            "rope.freq_base": cfg.rope_theta, "attention.layer_norm_rms_epsilon": cfg.norm_eps}
    for key, value in {**{f"llama.{k}": v for k, v in keys.items()}, **(extra or {})}.items():
        add = {int: w.add_uint32, float: w.add_float32, str: w.add_string}[type(value)]
        add(key, value)
    if spm:  # a SentencePiece vocabulary as llama.cpp's converter writes one
        w.add_tokenizer_model("llama")
        w.add_token_list(SPM_PIECES)
        w.add_token_scores(SPM_SCORES)
        w.add_token_types([2, 3, 3] + [1] * (len(SPM_PIECES) - 3))
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    for name, arr in llama_hf_tensors(model, np.float32).items():
        if name in _TOP_NAMES:
            gname = _TOP_NAMES[name]
        else:
            _, _, i, rest = name.split(".", 3)
            gname = f"blk.{i}.{_NAMES[rest.removesuffix('.weight')]}.weight"
        if name.endswith("q_proj.weight"):
            arr = _convert_hf_permute(arr, cfg.num_heads)
        elif name.endswith("k_proj.weight"):
            arr = _convert_hf_permute(arr, cfg.kv_heads)
        if gname == drop:
            continue
        if qtype and arr.ndim == 2:
            raw = gguf.quants.quantize(arr, gguf.GGMLQuantizationType[qtype.upper()])
            w.add_tensor(gname, raw, raw_dtype=gguf.GGMLQuantizationType[qtype.upper()])
        else:
            w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


SPM_PIECES = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "c", "\u2581a", "ab", "\u2581ab", "bc",
              "abc", "\u2581abc", *[f"x{i}" for i in range(27)]]
SPM_SCORES = [0.0, 0.0, 0.0] + [-float(i) for i in range(len(SPM_PIECES) - 3)]


def test_a_foreign_sentencepiece_vocabulary_becomes_an_spm_tokenizer(tmp_path):
    from sllm import tokenizer as tokenizers
    back = import_model(_write_foreign(tmp_path / "v.gguf", _llama(), spm=True))
    tok = tokenizers.from_dict(back.tokenizer)
    want = tokenizers.SPMTokenizer([p.replace("\u2581", " ") for p in SPM_PIECES], SPM_SCORES)
    assert tok.to_dict() == want.to_dict() and tok.bos_id == 1 and tok.unk_id == 0
    assert tok.encode("abc cab") == [12, 3, 6, 8]  # " abc", " ", "c", "ab": by score
    assert tok.decode([1, *tok.encode("abc cab")]) == "abc cab"


_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight",
              "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


@pytest.mark.parametrize("tie,kv", [(False, 2), (True, 4)])
def test_a_file_from_ggufs_writer_imports(tmp_path, tie, kv):
    model = _llama(tie, kv, seed=3)
    back = import_model(_write_foreign(tmp_path / "f.gguf", model))
    np.testing.assert_array_equal(back.forward(IDS)[0], model.forward(IDS)[0])
    assert back.tokenizer is None and "'gpt2' vocabulary is not converted" in \
        back.metadata["tokenizer_note"]


def test_ggufs_own_q8_0_blocks_import(tmp_path):
    model = _llama(seed=4)
    back = import_model(_write_foreign(tmp_path / "q.gguf", model, qtype="q8_0"))
    assert np.abs(back.forward(IDS)[0] - model.forward(IDS)[0]).max() <= TOLERANCE["q8_0"]


@pytest.mark.parametrize("extra,message", [
    ({"llama.rope.scaling.type": "yarn"}, "llama.rope.scaling.type = 'yarn'"),
    ({"llama.expert_count": 8}, "llama.expert_count = 8"),
    ({"llama.attention.key_length": 32}, "key_length 32 is not"),
    ({"llama.vocab_size": 41}, "llama.vocab_size 41 but token_embd has 40"),
])
def test_what_sllm_cannot_run_is_refused_by_name(tmp_path, extra, message):
    path = _write_foreign(tmp_path / "x.gguf", _llama(), extra=extra)
    with pytest.raises(SLLMError, match=message) as e:
        import_model(path)
    assert str(path) in str(e.value)


def test_tensors_must_match_the_config(tmp_path):
    path = _write_foreign(tmp_path / "x.gguf", _llama(), drop="blk.1.ffn_up.weight")
    with pytest.raises(SLLMError, match="'blk.1.ffn_up.weight' is missing"):
        import_model(path)
    path = _write_foreign(tmp_path / "y.gguf", _llama(), extra={"llama.block_count": 1})
    with pytest.raises(SLLMError, match="'blk.1.attn_k.weight' is not part of the model"):
        import_model(path)
    path = _write_foreign(tmp_path / "z.gguf", _llama(), extra={"llama.feed_forward_length": 95})
    with pytest.raises(SLLMError, match=r"'blk.0.ffn_gate.weight' has shape \(96, 64\); the config "
                                        r"needs \(95, 64\)"):
        import_model(path)
