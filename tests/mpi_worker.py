"""Run under mpiexec by test_distributed.py: a short data-parallel run whose rank 1 fails
at step 5, by raising ("raise") or by dying with SIGKILL ("kill").

usage: mpiexec -n 2 python mpi_worker.py raise|kill RUN_DIR
"""
import os
import signal
import sys
import time

from sllm import distributed, launch
from sllm import train as T

TINY = dict(vocab_size=300, embedding_dim=16, num_layers=2, num_heads=2, ffn_hidden_dim=32,
            max_seq_len=16, dropout=0.0)


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    group = distributed.world()

    def fail(trainer: T.Trainer) -> None:
        if trainer.step == 5 and group.rank == 1:
            with open(os.path.join(out, "failed_at"), "w") as f:
                f.write(repr(time.time()))
            if mode == "raise":
                raise RuntimeError("injected failure on rank 1")
            os.kill(os.getpid(), signal.SIGKILL)

    def run() -> T.TrainResult:
        cfg = T.TrainConfig(model=TINY, demo_chars=30_000, vocab_size=300, steps=1000,
                            batch_size=4, seq_len=16, eval_every=0, checkpoint_every=2,
                            warmup=5, out=out, backend="numpy")
        trainer = T.prepare(cfg, progress=False) if group.is_root else None
        trainer = launch.replicate(trainer, group)
        trainer.on_step = fail
        return trainer.run()

    distributed.guarded(group, run)


if __name__ == "__main__":
    main()
