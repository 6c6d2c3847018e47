"""Kernels on the model's shapes and the whole training step, per backend and config."""
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, PHASES

import sllm
from sllm.bench import train_step
from sllm.flops import train_flops_per_token
from sllm.optim import AdamW

ROOT = Path(__file__).resolve().parent.parent


def _setup(backend_name, config_name):
    cfg = sllm.ModelConfig.from_json(ROOT / "configs" / f"{config_name}.json")
    B, T = CONFIGS[config_name]
    return cfg, B, T, sllm.backends.get(backend_name)


def _label(benchmark, backend_name, config_name, what, flops=None):
    benchmark.group = f"{config_name}: {what}"
    benchmark.extra_info.update(phase=PHASES.get(backend_name, "plugin"), backend=backend_name)
    if flops:
        benchmark.extra_info["flops"] = flops


def test_train_step(benchmark, backend_name, config_name):
    cfg, B, T, backend = _setup(backend_name, config_name)
    model = sllm.SLLM(cfg, backend=backend)
    opt = AdamW(model)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))

    def step():
        train_step(model, opt, x, y)

    _label(benchmark, backend_name, config_name, f"train step B{B} T{T}",
           train_flops_per_token(cfg, T) * B * T)
    benchmark.extra_info["tokens"] = B * T
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("shape", ["qkv", "fc", "fc_proj", "lm_head"])
def test_gemm(benchmark, backend_name, config_name, shape):
    cfg, B, T, backend = _setup(backend_name, config_name)
    C, F, V = cfg.embedding_dim, cfg.ffn_hidden_dim, cfg.vocab_size
    K, M = {"qkv": (C, 3 * C), "fc": (C, F), "fc_proj": (F, C), "lm_head": (C, V)}[shape]
    N = B * T
    rng = np.random.default_rng(0)
    x, w = (backend.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in ((N, K), (K, M)))
    b, out = backend.zeros(M), backend.zeros((N, M))
    _label(benchmark, backend_name, config_name, f"matmul_fwd {N}x{K}x{M}", 2.0 * N * K * M)
    benchmark(backend.matmul_fwd, out, x, w, b)


@pytest.mark.parametrize("kernel", ["attention_fwd", "layernorm_fwd", "softmax_xent"])
def test_layer_kernel(benchmark, backend_name, config_name, kernel):
    cfg, B, T, backend = _setup(backend_name, config_name)
    C, V, H, N = cfg.embedding_dim, cfg.vocab_size, cfg.num_heads, B * T
    rng = np.random.default_rng(0)

    def arr(*shape):
        return backend.from_numpy(rng.standard_normal(shape).astype(np.float32))

    if kernel == "attention_fwd":
        args = (arr(B, T, C), backend.zeros(backend.attention_saved_shape(B, T, H)),
                arr(B, T, 3 * C), H)
    elif kernel == "layernorm_fwd":
        args = (arr(N, C), arr(N), arr(N), arr(N, C), arr(C), arr(C))
    else:
        logits = arr(N, V)
        args = (backend.zeros(N), logits, logits,
                backend.from_numpy(rng.integers(0, V, N), np.int32), 1.0 / N)
    _label(benchmark, backend_name, config_name, kernel)
    benchmark(getattr(backend, kernel), *args)
