"""FLOP counts against a hand count."""
import pytest

import sllm
from sllm.flops import decode_flops_per_token, forward_flops_per_token, train_flops_per_token


def test_flops_hand_count():
    cfg = sllm.ModelConfig(vocab_size=10, embedding_dim=4, num_layers=2, num_heads=2,
                           ffn_hidden_dim=8, max_seq_len=3)
    # per layer: qkv 4x12, proj 4x4, fc 4x8, proj 8x4 = 48+16+32+32 = 128 weights; head 40
    matmuls = 2 * (2 * 128 + 40)                  # 592
    # T = 3: per sequence and layer, 6 dot products of width 4 for scores, 6 for values
    attention = 2 * (2 * 6 * 4 + 2 * 6 * 4) / 3   # per token, both layers = 64
    assert forward_flops_per_token(cfg, 3) == pytest.approx(matmuls + attention)
    assert train_flops_per_token(cfg, 3) == pytest.approx(3 * (matmuls + attention))
    # decoding with 3 cached positions: the new token attends to 4 keys
    assert decode_flops_per_token(cfg, 3) == pytest.approx(matmuls + 2 * (2 * 4 * 4 * 2))


def test_llama_flops_hand_count():
    cfg = sllm.ModelConfig(vocab_size=10, embedding_dim=4, num_layers=2, num_heads=2,
                           ffn_hidden_dim=8, max_seq_len=3, architecture="llama", num_kv_heads=1)
    # per layer: q|k|v 4x(2+2*1)*2 = 4x8, o 4x4, gate and up 4x8, down 8x4 = 32+16+96 = 144
    matmuls = 2 * (2 * 144 + 40)
    attention = 2 * (2 * 6 * 4 + 2 * 6 * 4) / 3  # as GPT-2's: as many scores per query head
    assert forward_flops_per_token(cfg, 3) == pytest.approx(matmuls + attention)
