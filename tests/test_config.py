"""ModelConfig validation, JSON loading in both spellings, and the shipped configs."""
import json

import pytest

import sllm
from sllm import ConfigError, ModelConfig
from sllm.paths import CONFIG_DIR

CONFIGS = CONFIG_DIR  # the shipped configs (sllm/configs/)


@pytest.mark.parametrize("changes,key", [
    ({"vocab_size": 0}, "vocab_size"), ({"num_layers": -1}, "num_layers"),
    ({"embedding_dim": 10, "num_heads": 3}, "divisible"), ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"), ({"activation": "tanh"}, "activation"),
    ({"max_seq_len": 2.5}, "max_seq_len"), ({"tie_embeddings": "yes"}, "tie_embeddings")])
def test_invalid_configs_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=key):
        ModelConfig(**changes)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_unknown_key():
    with pytest.raises(ConfigError, match="bogus"):
        ModelConfig.from_json({"vocabSize": 10, "bogus": 1})


def test_both_spellings(tmp_path):
    camel = ModelConfig.from_json({"vocabSize": 10, "embeddingDim": 8, "numHeads": 2})
    snake = ModelConfig.from_json({"vocab_size": 10, "embedding_dim": 8, "num_heads": 2})
    assert camel == snake
    path = tmp_path / "c.json"
    camel.to_json(path)
    assert json.loads(path.read_text())["vocabSize"] == 10
    assert ModelConfig.from_json(path) == camel


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ModelConfig.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        ModelConfig.from_json(tmp_path / "list.json")


def _hand_count(V, C, L, F, T, tied):
    block = (C * 3 * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C) + 4 * C
    return V * C + T * C + L * block + 2 * C + (0 if tied else C * V)


@pytest.mark.parametrize("name", ["seed-baseline", "small-model", "medium-model", "large-model"])
def test_shipped_configs(name):
    cfg = ModelConfig.from_json(CONFIGS / f"{name}.json")
    assert cfg.num_parameters() == _hand_count(cfg.vocab_size, cfg.embedding_dim, cfg.num_layers,
                                               cfg.ffn_hidden_dim, cfg.max_seq_len, False)
    if name == "seed-baseline":
        assert (cfg.vocab_size, cfg.embedding_dim, cfg.num_layers, cfg.num_heads) == (400, 32, 2, 1)
        model = sllm.SLLM.from_config(CONFIGS / f"{name}.json", backend="numpy")
        assert model.num_parameters() == cfg.num_parameters() == 53_120


@pytest.mark.parametrize("tie", [False, True])
def test_closed_form_count_matches_the_layout(tie):
    cfg = ModelConfig(vocab_size=13, embedding_dim=12, num_layers=3, num_heads=4,
                      ffn_hidden_dim=20, max_seq_len=7, tie_embeddings=tie)
    assert cfg.num_parameters() == sllm.SLLM(cfg, backend="numpy", init=None).num_parameters()


@pytest.mark.parametrize("changes,key", [
    ({"architecture": "mamba"}, "architecture"),
    ({"architecture": "llama", "num_kv_heads": 3}, "numKvHeads"),
    ({"architecture": "llama", "num_kv_heads": 0}, "numKvHeads"),
    ({"architecture": "llama", "embedding_dim": 12, "num_heads": 4}, "even head dim"),
    ({"architecture": "llama", "rope_theta": 0}, "ropeTheta"),
    ({"architecture": "llama", "rope_theta": float("inf")}, "ropeTheta"),
    ({"architecture": "llama", "norm_eps": -1.0}, "normEps"),
    ({"norm_eps": 1e-6}, "normEps"), ({"num_kv_heads": 2}, "numKvHeads"),
    ({"rope_theta": 5.0}, "ropeTheta")])
def test_invalid_llama_fields_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=key):
        ModelConfig(**changes)


def test_llama_fields_round_trip_and_gpt2_dicts_are_unchanged(tmp_path):
    cfg = ModelConfig.from_json({"architecture": "llama", "numHeads": 4, "numKvHeads": 2,
                                 "ropeTheta": 500000, "normEps": 1e-6, "embeddingDim": 16})
    assert (cfg.kv_heads, cfg.rope_theta, cfg.norm_eps, cfg.qkv_width) == (2, 5e5, 1e-6, 32)
    assert ModelConfig.from_json(json.loads(cfg.to_json())) == cfg
    # a GPT-2 config's dict has exactly the keys it had before the llama family existed
    assert set(ModelConfig().to_dict()) == {"vocabSize", "embeddingDim", "numLayers", "numHeads",
                                            "ffnHiddenDim", "dropout", "maxSeqLen",
                                            "activation", "tieEmbeddings"}
    assert ModelConfig(num_kv_heads=4).to_dict() == ModelConfig().to_dict()  # Hkv = H
    mqa = ModelConfig(architecture="llama", num_kv_heads=1)
    assert mqa.to_dict()["numKvHeads"] == 1 and ModelConfig(architecture="llama").kv_heads == 4
