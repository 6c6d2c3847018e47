"""ModelConfig: the shape of a model, validated, loadable from the roadmap's JSON files.

JavaScript twin: sllm/web/format.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .fileio import atomic_write_text
from .paths import config_file

# JSON config files (sllm/configs/) use the roadmap's camelCase keys; Python uses snake_case.
_CAMEL = {
    "vocabSize": "vocab_size",
    "embeddingDim": "embedding_dim",
    "numLayers": "num_layers",
    "numHeads": "num_heads",
    "ffnHiddenDim": "ffn_hidden_dim",
    "dropout": "dropout",
    "maxSeqLen": "max_seq_len",
    "activation": "activation",
    "tieEmbeddings": "tie_embeddings",
    "architecture": "architecture",
    "numKvHeads": "num_kv_heads",
    "ropeTheta": "rope_theta",
    "normEps": "norm_eps",
}
_SNAKE_TO_CAMEL = {v: k for k, v in _CAMEL.items()}
ACTIVATIONS = ("gelu", "relu")
ARCHITECTURES = ("gpt2", "llama")
# The llama fields' defaults. A GPT-2 config leaves them at these values and they are left
# out of its dict, so a GPT-2 config (and the file holding it) is byte for byte what it was
# before the llama family existed.
LLAMA_DEFAULTS: dict[str, Any] = {"num_kv_heads": None, "rope_theta": 10000.0, "norm_eps": 1e-5}


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a GPT-2 or llama-family model.

    vocab_size: number of token ids; embedding_dim: width C of the residual stream;
    num_layers: transformer blocks; num_heads: attention heads (C must divide evenly);
    ffn_hidden_dim: MLP width F; dropout: probability in [0, 1) used in train mode;
    max_seq_len: longest context; activation: "gelu" (GPT-2 tanh form) or "relu";
    tie_embeddings: reuse wte as the output projection.
    architecture: "gpt2" (LayerNorm, learned positions, GELU/ReLU MLP, biases) or "llama"
    (RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention, no biases).
    num_kv_heads (llama): key/value heads, dividing num_heads (1 = multi-query; None =
    num_heads); rope_theta (llama): base of the rotary frequencies; norm_eps: RMSNorm's eps
    (llama); GPT-2's LayerNorm eps is fixed at 1e-5, so a gpt2 config keeps that value.
    Dropout sits where GPT-2 has it in both families (after the attention output projection
    and after the MLP); activation is unused by llama (its MLP is SwiGLU).
    """

    vocab_size: int = 5000
    embedding_dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_hidden_dim: int = 512
    dropout: float = 0.1
    max_seq_len: int = 256
    activation: str = "gelu"
    tie_embeddings: bool = False
    architecture: str = "gpt2"
    num_kv_heads: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for key in ("vocab_size", "embedding_dim", "num_layers", "num_heads",
                    "ffn_hidden_dim", "max_seq_len"):
            value = getattr(self, key)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, key, int(value))  # accept numpy integers
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if self.embedding_dim % self.num_heads != 0:
            raise ConfigError(
                f"embedding_dim ({self.embedding_dim}) must be divisible by "
                f"num_heads ({self.num_heads})")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError(f"tie_embeddings must be true or false, got {self.tie_embeddings!r}")
        self._check_family()

    def _check_family(self) -> None:
        """architecture and the llama fields (ConfigError naming the camelCase key)."""
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        kv = self.num_kv_heads
        if kv is not None:
            if isinstance(kv, numbers.Integral) and not isinstance(kv, bool):
                kv = int(kv)
                object.__setattr__(self, "num_kv_heads", kv)
            if isinstance(kv, bool) or not isinstance(kv, int) or kv <= 0:
                raise ConfigError(f"numKvHeads must be a positive integer, got {kv!r}")
            if self.num_heads % kv != 0:
                raise ConfigError(f"numKvHeads ({kv}) must divide numHeads ({self.num_heads})")
        for key, name in (("rope_theta", "ropeTheta"), ("norm_eps", "normEps")):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
            object.__setattr__(self, key, float(value))
        if self.architecture == "gpt2":
            for key, default in LLAMA_DEFAULTS.items():
                value = getattr(self, key)
                if value != default and not (key == "num_kv_heads" and value == self.num_heads):
                    raise ConfigError(f"{_SNAKE_TO_CAMEL[key]} ({value!r}) applies to llama "
                                      f"models only (architecture is gpt2: LayerNorm eps "
                                      f"1e-5, learned positions, one KV head per head)")
        elif self.head_dim % 2 != 0:
            raise ConfigError(f"rotary embeddings need an even head dim: embeddingDim "
                              f"({self.embedding_dim}) / numHeads ({self.num_heads}) = "
                              f"{self.head_dim}")

    @property
    def head_dim(self) -> int:
        """Width D of one attention head."""
        return self.embedding_dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads Hkv (num_kv_heads, or num_heads when None; always num_heads for gpt2)."""
        return self.num_kv_heads or self.num_heads

    @property
    def qkv_width(self) -> int:
        """Columns of the fused q|k|v projection: (H + 2 Hkv) * D (3C for gpt2)."""
        return (self.num_heads + 2 * self.kv_heads) * self.head_dim

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        """Build a config from a dict with snake_case or camelCase keys (anything else: ConfigError)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a JSON object, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = _CAMEL.get(key, key)
            if name not in fields:
                raise ConfigError(f"unknown config key {key!r}; known keys: "
                                  f"{', '.join(sorted(_CAMEL))}")
            if name in kwargs:
                raise ConfigError(f"config key {key!r} given twice (camelCase and snake_case)")
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, source: str | os.PathLike[str] | dict[str, Any]) -> ModelConfig:
        """Load a config from a JSON file path, a shipped config's name ("small-model"), or
        an already parsed dict."""
        if isinstance(source, dict):
            return cls.from_dict(source)
        try:
            with open(config_file(source), encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {source}") from None
        except IsADirectoryError:
            raise ConfigError(f"{source} is a directory, not a config file (a model file "
                              f"is loaded with sllm.load)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {source} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def to_dict(self, camel: bool = True) -> dict[str, Any]:
        """The config as a dict, with the roadmap's camelCase keys by default."""
        data = dataclasses.asdict(self)
        if self.architecture == "gpt2":  # exactly the keys a config had before llama
            for key in ("architecture", *LLAMA_DEFAULTS):
                del data[key]
        else:
            data["num_kv_heads"] = self.kv_heads
        return {_SNAKE_TO_CAMEL[k]: v for k, v in data.items()} if camel else data

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The config as JSON text; also written to `path` when one is given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def num_parameters(self) -> int:
        """Parameter count implied by this config (matches SLLM.num_parameters()), in closed
        form so that a reader can bound a forged config before building its layout."""
        C, F, V = self.embedding_dim, self.ffn_hidden_dim, self.vocab_size
        head = 0 if self.tie_embeddings else C * V
        if self.architecture == "llama":  # qkv, o, gate, up, down; two RMSNorm weights
            block = C * self.qkv_width + C * C + 3 * C * F + 2 * C
            return V * C + self.num_layers * block + C + head
        block = 4 * C * C + 2 * C * F + 9 * C + F  # qkv, proj, fc, fc_proj (+ biases), 2 LN
        return V * C + self.max_seq_len * C + self.num_layers * block + 2 * C + head


def resolve_config(config: ModelConfig | dict[str, Any] | str | os.PathLike[str]) -> ModelConfig:
    """Accept a ModelConfig, a dict, a path to a JSON file, or a shipped config's name."""
    if isinstance(config, ModelConfig):
        return config
    return ModelConfig.from_json(config)
