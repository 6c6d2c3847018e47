"""The paper scaling model of docs/distributed.md: data-parallel step time on N nodes.

    python bench/mpi_model.py [--gflops 100] [--batch-size 16] [--latency-us 20]

Per step every node computes forward + backward on its own B x T tokens, then the flat
gradient (4P bytes) goes through a ring Allreduce, which sends and receives
2(N-1)/N x 4P bytes per node in 2(N-1) messages. sllm does not overlap the two (the
Allreduce starts after backward), so

    t_step(N) = B*T*flops_per_token / F  +  2(N-1)/N * 4P / bandwidth  +  2(N-1) * latency

with F the FLOP/s one node sustains in training. Weak scaling (the default): each node
keeps B sequences, the global batch is N x B, and speed-up = N * t_step(1) / t_step(N).
Strong scaling (--global-batch G): the G sequences are split, B = G / N, and speed-up =
t_step(1) / t_step(N) with t_step(1) computing all G.
"""
from __future__ import annotations

import argparse
import os

from sllm import ModelConfig
from sllm.flops import train_flops_per_token

CONFIGS = (("small", "configs/small-model.json", 128), ("medium", "configs/medium-model.json", 128),
           ("large", "configs/large-model.json", 256))
NODES = (1, 2, 4, 8, 16, 32, 64)
LINKS = (("10 Gb/s Ethernet", 1.25e9), ("100 Gb/s InfiniBand", 12.5e9))


def step_seconds(cfg: ModelConfig, T: int, B: float, nodes: int, flops: float, bandwidth: float,
                 latency: float) -> tuple[float, float]:
    """(compute, allreduce) seconds of one step on `nodes` nodes."""
    compute = B * T * train_flops_per_token(cfg, T) / flops
    ring = 2 * (nodes - 1) / nodes * 4 * cfg.num_parameters() / bandwidth
    return compute, ring + 2 * (nodes - 1) * latency


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gflops", type=float, default=100.0, help="training GFLOP/s of one node")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per node per step")
    p.add_argument("--latency-us", type=float, default=20.0, help="per-message latency")
    p.add_argument("--global-batch", type=int, default=None,
                   help="strong scaling: this many sequences per step, split over the nodes")
    a = p.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    for link, bw in LINKS:
        batch = f"global batch {a.global_batch}" if a.global_batch else f"B={a.batch_size} per node"
        print(f"\n{link} ({bw / 1e9:g} GB/s), {a.latency_us:g} us per message, "
              f"{a.gflops:g} GFLOP/s per node, {batch}\n")
        print("| config | parameters | T | compute/step | " +
              " | ".join(f"N={n}" for n in NODES[1:]) + " |")
        print("| --- " * (4 + len(NODES) - 1) + "|")
        for name, path, T in CONFIGS:
            cfg = ModelConfig.from_json(os.path.join(root, path))
            B1 = a.global_batch or a.batch_size
            base = sum(step_seconds(cfg, T, B1, 1, a.gflops * 1e9, bw, a.latency_us * 1e-6))
            cells = []
            for n in NODES[1:]:
                B = a.global_batch / n if a.global_batch else a.batch_size
                c, r = step_seconds(cfg, T, B, n, a.gflops * 1e9, bw, a.latency_us * 1e-6)
                work = 1 if a.global_batch else n  # weak scaling: N times the tokens per step
                cells.append(f"{work * base / (c + r):.1f}x ({r * 1e3:.0f} ms)")
            print(f"| {name} | {cfg.num_parameters() / 1e6:.1f} M | {T} | {base * 1e3:.0f} ms | "
                  + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
