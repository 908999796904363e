"""What two CPU ranks can gain over one process on this machine, whatever runs them.

    python bench/ddp_ceiling.py [--rounds 12] [--block 10]

A plain loop around gpt.model with nanoGPT's README CPU config (4 layers, 4 heads, 128 wide,
block 64, batch 12; AdamW, clip 1.0), no service, no engine: one job of two ranks (gloo, one
torch thread each, under `torchrun --standalone`, which this script starts), the kinds of
step taking turns every --block iterations so that each is timed beside the others:

- one process: rank 0 does both micro-steps and the update, rank 1 waits in a barrier;
- ddp: each rank one micro-step under DistributedDataParallel's default buckets;
- ddp, one bucket: the same with bucket_cap_mb named (what gpt/ddp.py does on CPU);
- no exchange: each rank one micro-step and the update, gradients not averaged: the floor.

Prints each kind's median step (ms, rank 0) and one process's over each: the scaling the
service's two-rank runs can reach here (bench/ddp_throughput.py measures theirs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("one process", "ddp", "ddp, one bucket", "no exchange")


def ranks(rounds: int, block: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    sys.path.insert(0, str(ROOT))
    from gpt.ddp import CPU_BUCKET_MB
    from gpt.model import GPT, GPTConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0))
    opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), "cpu")
    wrapped = {
        "ddp": DistributedDataParallel(model),
        "ddp, one bucket": DistributedDataParallel(model, bucket_cap_mb=CPU_BUCKET_MB),
    }
    tokens = torch.randint(0, 65, (1_000_000,))

    def micro(module: torch.nn.Module, scale: float) -> torch.Tensor:
        ix = torch.randint(len(tokens) - 65, (12,))
        xy = tokens[ix[:, None] + torch.arange(65)]
        _, loss = module(xy[:, :-1].contiguous(), xy[:, 1:].contiguous())
        (loss * scale).backward()
        return loss.detach()

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in range(rounds):
        for kind in KINDS:
            for i in range(block):
                dist.barrier()
                t0 = time.perf_counter()
                if kind == "one process":
                    if rank == 0:
                        loss = micro(model, 0.5) + micro(model, 0.5)
                        update()
                        loss.item()
                else:
                    loss = micro(wrapped.get(kind, model), 1.0)
                    update()
                    loss.item()
                if r > 0 and i > 1:  # the first round and each turn's first steps warm up
                    times[kind].append((time.perf_counter() - t0) * 1e3)
    if rank == 0:
        med = {k: statistics.median(v) for k, v in times.items()}
        for k in KINDS:
            over = "" if k == "one process" else f"   one process / this: {med['one process'] / med[k]:.2f}x"
            print(f"{k:16s} {med[k]:6.1f} ms{over}", flush=True)
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block", type=int, default=10)
    a = ap.parse_args()
    if "RANK" in os.environ:
        ranks(a.rounds, a.block)
        return 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [__file__, f"--rounds={a.rounds}", f"--block={a.block}"]
    return subprocess.run([*torchrun, *args], env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
