"""Shared fixtures: the backends under test, and small configs."""
import numpy as np
import pytest

import sllm
from sllm import backends


def _available():
    return backends.available()


@pytest.fixture(params=_available())
def backend_name(request):
    """Each available backend by name."""
    return request.param


@pytest.fixture
def tiny_config():
    """The gradient-check config: 2 layers, 2 heads, C=8, V=11."""
    return sllm.ModelConfig(vocab_size=11, embedding_dim=8, num_layers=2, num_heads=2,
                            ffn_hidden_dim=12, dropout=0.0, max_seq_len=8)


@pytest.fixture
def rng():
    """A seeded generator."""
    return np.random.default_rng(1234)
