"""Inputs shared by the two hosts of sllm's JavaScript twins, the browser tests
(tests/test_web.py) and the Node parity tests (tests/test_node_parity.py): awkward text,
and model files corrupted the ways a reader must refuse."""
from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

# Each JavaScript module of sllm/web and the Python modules it re-implements: each side
# names the other in its header (tests/test_web.py checks), and tests/test_node_parity.py
# holds them equal.
TWINS = {
    "format.js": ("sllm/serialize.py", "sllm/config.py", "sllm/layout.py"),
    "tokenizers.js": ("sllm/tokenizer.py",),
    "model.js": ("sllm/model.py", "sllm/optim.py"),
    "llama.js": ("sllm/llama.py",),
    "kernels.js": ("sllm/backends/wasm.py", "sllm/backends/wasm_memory.py"),
    "sllm.js": ("sllm/generate.py", "sllm/sampler.py", "sllm/chat.py"),
    "constrain.js": ("sllm/grammar.py", "sllm/constrain.py"),
    "lora.js": ("sllm/lora.py",),
}
PAGE_ONLY = ("app.js", "worker.js")  # the page's own code, with no Python counterpart

ODD_TEXT = ("Hello, world! Don't stop… it's 3.5 km (or 2,000 m)?\n\n  Tabs\tand\r\nCRLF\x1c"
            "\x85line ｶﾀｶﾅ ① ² ﬁ İstanbul ÉCOLE naïve 😀 under_score\u00a0nbsp\u3000")
JAPANESE = "日本語のテキストです。東京は大きい！きょうは、いい天気ですね。カタカナとひらがな。"


# The JavaScript side of a training-steps case: Model.trainStep with the defaults
# (AdamW, betas 0.9/0.99, weight decay 0.1, clipping at 1.0), B=4, T=24, lr 2e-3.
JS_TRAIN_STEPS = "args[1].map(([x, y]) => m.trainStep(x.flat(), y.flat(), 4, 24, {lr: 2e-3}).loss)"


def python_train_steps(model: Any, batches: list[tuple[Any, Any]]) -> list[float]:
    """Python's side of JS_TRAIN_STEPS: the same steps with sllm.optim (over the attached
    adapter when there is one, as Model.trainStep), the losses."""
    from sllm.optim import AdamW
    opt = AdamW(model.trainable(), lr=2e-3, betas=(0.9, 0.99), weight_decay=0.1)
    model.train()
    losses = []
    for x, y in batches:
        losses.append(model.forward_backward(x, y))
        opt.clip_grad_norm(1.0)
        opt.step()
    model.eval()
    return losses


def corrupt_files(good: bytes) -> dict[str, bytes]:
    version = bytearray(good)
    version[4:8] = struct.pack("<I", 7)
    version[20:24] = struct.pack("<I", zlib.crc32(bytes(version[:20])))
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    return {"not SLLM": b"GGUF" + good[4:], "truncated": good[: len(good) // 3],
            "unknown version": bytes(version), "bit flip": bytes(flipped), "empty": b"",
            "trailing bytes": good + b"\0" * 5, "header only": good[:24]}


def edit_table(good: bytes, edit: Callable[[bytearray], None]) -> bytes:
    """The file with edit(table: bytearray) applied to its tensor table (CRC rewritten)."""
    out, pos = bytearray(good), 24
    for _ in range(struct.unpack_from("<I", good, 16)[0]):
        start = -(-(pos + 16) // 64) * 64 - 16
        kind, _, length = struct.unpack_from("<IIQ", good, start)
        if kind == 4:
            table = bytearray(good[start + 16:start + 16 + length])
            edit(table)
            out[start + 16:start + 16 + length] = table
            struct.pack_into("<I", out, start + 4, zlib.crc32(bytes(table)))
        pos = start + 16 + length
    return bytes(out)


def first_quantized_entry(table: bytearray) -> int:
    """Offset of the dtype byte of the first entry with a quantized dtype code."""
    pos = 4
    while True:
        (n,) = struct.unpack_from("<H", table, pos)
        code, ndim = table[pos + 2 + n], table[pos + 3 + n]
        if code >= 2:
            return pos + 2 + n
        pos += 2 + n + 4 + 4 * ndim + 16


def corrupt_quantized(good: bytes) -> dict[str, bytes]:
    def wrong_k(t):
        at = first_quantized_entry(t)
        struct.pack_into("<I", t, at + 8, struct.unpack_from("<I", t, at + 8)[0] + 32)

    def unknown_code(t):
        t[first_quantized_entry(t)] = 9

    def one_dim(t):
        t[first_quantized_entry(t) + 1] = 1
    return {"quantized size": edit_table(good, wrong_k), "unknown dtype": edit_table(good, unknown_code),
            "quantized 1-D": edit_table(good, one_dim)}
