"""PyTorch reference of sllm's model and training step, for benchmarks only.

Same architecture as sllm/model.py (GPT-2: learned positions, pre-LayerNorm blocks,
tanh-GELU MLP, causal multi-head attention, untied lm_head without bias), trained with
torch.optim.AdamW on the same number of threads; and sampling with a KV cache,
for the generation comparison. torch is never a dependency of sllm: `pip install torch`
into a benchmark environment to use this file.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(x)); attention can use and extend a KV cache."""

    def __init__(self, C: int, H: int, Fh: int):
        super().__init__()
        self.H = H
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, Fh), nn.Linear(Fh, C)

    def attend(self, x: torch.Tensor, cache: list | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        x = x + self.attend(self.ln_1(x), cache)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    """The sllm model in PyTorch (dropout 0), GPT-2 initialisation."""

    def __init__(self, V: int, C: int, L: int, H: int, Fh: int, max_T: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(max_T, C)
        self.h = nn.ModuleList(Block(C, H, Fh) for _ in range(L))
        self.ln_f, self.lm_head = nn.LayerNorm(C), nn.Linear(C, V, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
        for b in self.h:
            nn.init.normal_(b.c_proj.weight, std=0.02 / math.sqrt(2 * L))

    def forward(self, idx: torch.Tensor, caches: list | None = None, pos: int = 0):
        x = self.wte(idx) + self.wpe(torch.arange(pos, pos + idx.shape[1]))
        for i, block in enumerate(self.h):
            x = block(x, caches[i] if caches is not None else None)
        return self.lm_head(self.ln_f(x))


def make(cfg, threads: int) -> tuple[TorchGPT, torch.optim.Optimizer]:
    """A model and AdamW for an sllm ModelConfig, on `threads` threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = TorchGPT(cfg.vocab_size, cfg.embedding_dim, cfg.num_layers, cfg.num_heads,
                     cfg.ffn_hidden_dim, cfg.max_seq_len)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def train_step(model: TorchGPT, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor) -> float:
    """One forward + backward + AdamW step; returns the loss."""
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


@torch.no_grad()
def generate(model: TorchGPT, prompt: list[int], new_tokens: int, seed: int = 0) -> list[int]:
    """Sample new_tokens after prompt (batch 1) with a KV cache."""
    gen = torch.Generator().manual_seed(seed)
    caches = [[] for _ in model.h]
    ids = list(prompt)
    logits = model(torch.tensor([ids]), caches, 0)[0, -1]
    for _ in range(new_tokens):
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        ids.append(token)
        logits = model(torch.tensor([[token]]), caches, len(ids) - 1)[0, -1]
    return ids


def run_job(job) -> dict:
    """`sllm bench --vs torch`: the train and generate suites of sllm.bench.Job, in PyTorch,
    reported in the same row format as the sllm backends."""
    import os
    import resource

    import numpy as np
    import sllm
    from sllm.bench import _row, timed
    from sllm.flops import decode_flops_per_token, train_flops_per_token

    cfg = sllm.ModelConfig.from_dict(job.config)
    T = min(job.seq_len, cfg.max_seq_len)
    model, opt = make(cfg, job.threads or len(os.sched_getaffinity(0)))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, cfg.vocab_size, (job.batch, T)))
    y = torch.from_numpy(rng.integers(0, cfg.vocab_size, (job.batch, T)))
    rows = []
    if "train" in job.suites:
        times = timed(lambda: train_step(model, opt, x, y), job.repeats, warmup=2)
        rows.append(_row("train", f"step B{job.batch} T{T}", times, job.batch * T,
                         "tokens_per_s", train_flops_per_token(cfg, T) * job.batch * T))
    if "generate" in job.suites:
        n = min(job.gen_tokens, cfg.max_seq_len - 16)
        times = timed(lambda: generate(model, list(range(16)), n), max(1, job.repeats // 2))
        flops = sum(decode_flops_per_token(cfg, 16 + i) for i in range(n))
        rows.append(_row("generate", f"decode {n} tokens, batch 1", times, n, "tokens_per_s",
                         flops))
    return {"backend": "torch", "rows": rows,
            "capabilities": {"torch": torch.__version__, "threads": torch.get_num_threads()},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "analytic_mb": None}  # torch's activation memory is not ours to count
