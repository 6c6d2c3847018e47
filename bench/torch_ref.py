"""PyTorch reference of sllm's model and training step, for benchmarks only.

Same architecture as sllm/model.py (GPT-2: learned positions, pre-LayerNorm blocks,
tanh-GELU MLP, causal multi-head attention, untied lm_head without bias) or, for a llama
config, as sllm/llama.py (RMSNorm, rotate-half rotary embeddings, grouped-query attention,
SwiGLU, no biases), trained with
torch.optim.AdamW on the same number of threads; and sampling with a KV cache,
for the generation comparison. torch is never a dependency of sllm: `pip install torch`
into a benchmark environment to use this file.
"""
from __future__ import annotations

import math
from typing import Any

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

    def __init__(self, V: int, C: int, L: int, H: int, Fh: int, max_T: int,
                 tie: bool = False):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(max_T, C)
        self.h = nn.ModuleList(Block(C, H, Fh) for _ in range(L))
        self.ln_f, self.lm_head = nn.LayerNorm(C), nn.Linear(C, V, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
        for b in self.h:
            assert isinstance(b, Block)
            nn.init.normal_(b.c_proj.weight, std=0.02 / math.sqrt(2 * L))
        if tie:  # as nanoGPT: the output projection is the token embedding
            self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, caches: list | None = None, pos: int = 0) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(pos, pos + idx.shape[1]))
        for i, block in enumerate(self.h):
            x = block(x, caches[i] if caches is not None else None)
        return self.lm_head(self.ln_f(x))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's rotate-half rotary embedding of x (B,H,T,D); cos, sin (T, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class LlamaBlock(nn.Module):
    """x + o(attention(rope(q), rope(k), v)) of rmsnorm(x), then + down(silu(gate) * up)."""

    def __init__(self, C: int, H: int, Hkv: int, Fh: int, eps: float):
        super().__init__()
        self.H, self.Hkv, self.D = H, Hkv, C // H
        self.ln_1, self.ln_2 = nn.RMSNorm(C, eps=eps), nn.RMSNorm(C, eps=eps)
        self.qkv = nn.Linear(C, (H + 2 * Hkv) * self.D, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.gate, self.up = nn.Linear(C, Fh, bias=False), nn.Linear(C, Fh, bias=False)
        self.mlp_proj = nn.Linear(Fh, C, bias=False)

    def attend(self, x: torch.Tensor, rope: tuple, cache: list | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split([self.H * self.D, self.Hkv * self.D, self.Hkv * self.D], 2)
        q = _rotate(q.view(B, T, self.H, self.D).transpose(1, 2), *rope)
        k = _rotate(k.view(B, T, self.Hkv, self.D).transpose(1, 2), *rope)
        v = v.view(B, T, self.Hkv, self.D).transpose(1, 2)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1,
                                           enable_gqa=self.Hkv != self.H)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x: torch.Tensor, rope: tuple, cache: list | None = None) -> torch.Tensor:
        x = x + self.attend(self.ln_1(x), rope, cache)
        h = self.ln_2(x)
        return x + self.mlp_proj(F.silu(self.gate(h)) * self.up(h))


class TorchLlama(nn.Module):
    """sllm's llama family in PyTorch (dropout 0), the same initialisation as sllm's."""

    def __init__(self, cfg: Any):
        super().__init__()
        C, L, V = cfg.embedding_dim, cfg.num_layers, cfg.vocab_size
        self.theta, self.D = cfg.rope_theta, cfg.head_dim
        self.wte = nn.Embedding(V, C)
        self.h = nn.ModuleList(LlamaBlock(C, cfg.num_heads, cfg.kv_heads, cfg.ffn_hidden_dim,
                                          cfg.norm_eps) for _ in range(L))
        self.ln_f, self.lm_head = nn.RMSNorm(C, eps=cfg.norm_eps), nn.Linear(C, V, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
        for b in self.h:
            assert isinstance(b, LlamaBlock)
            for w in (b.c_proj.weight, b.mlp_proj.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * L))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, caches: list | None = None, pos: int = 0) -> torch.Tensor:
        inv = self.theta ** (-torch.arange(0, self.D, 2, dtype=torch.float64) / self.D)
        angles = torch.arange(pos, pos + idx.shape[1], dtype=torch.float64)[:, None] * inv
        rope = (angles.cos().float(), angles.sin().float())
        x = self.wte(idx)
        for i, block in enumerate(self.h):
            x = block(x, rope, caches[i] if caches is not None else None)
        return self.lm_head(self.ln_f(x))


def make(cfg: Any, threads: int, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
         weight_decay: float = 0.01) -> tuple[Any, torch.optim.Optimizer]:
    """A model and AdamW for an sllm ModelConfig, on `threads` threads; weight decay on
    the matrices only (as sllm and nanoGPT)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model: nn.Module
    if getattr(cfg, "architecture", "gpt2") == "llama":
        model = TorchLlama(cfg)
    else:
        model = TorchGPT(cfg.vocab_size, cfg.embedding_dim, cfg.num_layers, cfg.num_heads,
                         cfg.ffn_hidden_dim, cfg.max_seq_len, cfg.tie_embeddings)
    params = list(model.parameters())  # tied weights appear once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return model, torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_at(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to min_lr (nanoGPT's get_lr, sllm's WarmupCosine)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    ratio = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def train_loop(model: Any, opt: torch.optim.Optimizer, train_ids: torch.Tensor,
               val_ids: torch.Tensor, B: int, T: int, steps: int, eval_every: int,
               eval_batches: int, out: str, lr: float = 1e-3, min_lr: float = 1e-4,
               warmup: int = 100, clip: float = 1.0, seed: int = 0) -> dict:
    """A plain PyTorch training loop, nanoGPT's shape: random windows, the lr schedule,
    clipping, AdamW, an evaluation every eval_every steps over fixed validation windows,
    a metrics line per step and a checkpoint at the end. Returns the last losses."""
    import json
    import os
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(T + 1)
    val_starts = torch.linspace(0, len(val_ids) - T - 2, eval_batches * B).long()
    val_x = val_ids[val_starts[:, None] + offsets[:-1]].view(eval_batches, B, T)
    val_y = val_ids[val_starts[:, None] + offsets[1:]].view(eval_batches, B, T)
    losses: dict[str, float | None] = {"val_loss": None}
    with open(os.path.join(out, "metrics.jsonl"), "w", encoding="utf-8") as log:
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, lr, min_lr, warmup, steps)
            ix = torch.randint(len(train_ids) - T - 1, (B,), generator=gen)
            x, y = train_ids[ix[:, None] + offsets[:-1]], train_ids[ix[:, None] + offsets[1:]]
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            record = {"step": step + 1, "loss": loss.item(), "grad_norm": float(norm)}
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                model.eval()
                with torch.no_grad():
                    vals = [F.cross_entropy(model(vx).view(-1, logits.shape[-1]), vy.view(-1))
                            .item() for vx, vy in zip(val_x, val_y, strict=True)]
                model.train()
                record["val_loss"] = losses["val_loss"] = sum(vals) / len(vals)
            losses["loss"] = record["loss"]
            log.write(json.dumps(record) + "\n")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()},
               os.path.join(out, "checkpoint.pt"))
    return losses


def train_step(model: Any, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor) -> float:
    """The step sllm.bench.train_step times: forward, backward, the gradient norm clipped
    to 1.0, AdamW; returns the loss."""
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


@torch.no_grad()
def generate(model: Any, prompt: list[int], new_tokens: int, seed: int = 0) -> list[int]:
    """Sample new_tokens after prompt (batch 1) with a KV cache."""
    gen = torch.Generator().manual_seed(seed)
    caches: list[list] = [[] for _ in model.h]
    ids = list(prompt)
    logits = model(torch.tensor([ids]), caches, 0)[0, -1]
    for _ in range(new_tokens):
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        ids.append(token)
        logits = model(torch.tensor([[token]]), caches, len(ids) - 1)[0, -1]
    return ids


def run_job(job: Any) -> dict:
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
        rows.append(_train_loop_row(job, cfg, T, rows[-1]))
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


def _train_loop_row(job: Any, cfg: Any, T: int, bare: dict) -> dict:
    """The end-to-end row of sllm.bench.train_loop_row, as a plain PyTorch loop on the same
    data (same steps, evaluations, clipping and final checkpoint)."""
    import tempfile
    import time

    from sllm.bench import _row, e2e_steps, loop_setup
    from sllm.flops import train_flops_per_token
    steps = e2e_steps(job.repeats)
    with tempfile.TemporaryDirectory(prefix="torch-bench-") as out:
        tcfg, _, data = loop_setup(job.batch, T, steps, cfg.vocab_size, out)
        model, opt = make(cfg, torch.get_num_threads(), tcfg.lr, tcfg.betas, tcfg.weight_decay)
        train_ids = torch.from_numpy(data.train.ids.astype("int64"))
        val_ids = torch.from_numpy(data.val.ids.astype("int64"))
        t0 = time.perf_counter()
        train_loop(model, opt, train_ids, val_ids, job.batch, T, steps, tcfg.eval_every,
                   tcfg.eval_batches, out, tcfg.lr, tcfg.min_lr, tcfg.warmup, tcfg.grad_clip)
        wall = time.perf_counter() - t0
    row = _row("train", f"train loop B{job.batch} T{T}, {steps} steps", [wall],
               steps * job.batch * T, "tokens_per_s",
               train_flops_per_token(cfg, T) * job.batch * T * steps)
    row["vs_step"] = row["tokens_per_s"] / bare["tokens_per_s"]
    return row
