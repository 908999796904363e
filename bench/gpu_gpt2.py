"""GPT-2 124M on one GPU under torch's elastic launcher: step time, tokens/s and MFU.

    python bench/gpu_gpt2.py [--iters 60] [--nproc 1] [--grad-accum 5]

nanoGPT's config/train_gpt2.py shape (12 layers, 12 heads, 768 wide, block 1024, batch 12,
bias off, dropout 0) on a generated token array (uniform GPT-2 ids: the step's arithmetic
does not care what the tokens say), bf16 and torch.compile, started as
`torchrun --standalone --nproc_per_node=N -m gpt train` (NCCL). --grad-accum is per rank, as
nanoGPT's 40 over 8 GPUs is 5 each; nanoGPT reported about 135 ms/iter on an A100 so.

Prints the median step time past the first 10 iterations (compilation, allocator), the
tokens/s it gives (every rank's) and the median MFU the engine reports (against the
device's peak x world size). Needs CUDA; on a machine without it, says so and exits 2.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 10
LINE = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms, mfu ([\d.]+)%")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--grad-accum", type=int, default=5, help="micro-steps per rank per iteration")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: this bench needs one", file=sys.stderr)
        return 2
    batch, block = 12, 1024
    with tempfile.TemporaryDirectory(prefix="gptjobs-gpt2-") as d:
        rng = np.random.default_rng(0)
        for split, n in (("train", 20_000_000), ("val", 1_000_000)):  # no meta.pkl: GPT-2 BPE ids
            rng.integers(0, 50257, n, dtype=np.uint16).tofile(Path(d) / f"{split}.bin")
        flags = {
            "dataset": d,
            "out_dir": str(Path(d) / "out"),
            "n_layer": 12,
            "n_head": 12,
            "n_embd": 768,
            "block_size": block,
            "batch_size": batch,
            "bias": False,
            "dropout": 0.0,
            "gradient_accumulation_steps": a.grad_accum * a.nproc,
            "device": "cuda",
            "dtype": "bfloat16",
            "compile": True,
            "max_iters": a.iters,
            "warmup_iters": min(10, a.iters),
            "lr_decay_iters": a.iters,
            "eval_interval": 100_000,
            "eval_iters": 1,
            "log_interval": 1,
            "always_save_checkpoint": False,
        }
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}"]
        argv = [*torchrun, "-m", "gpt", "train", *(f"--{k}={v}" for k, v in flags.items())]
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
        if out.returncode != 0:
            print(out.stdout[-3000:], out.stderr[-3000:], sep="\n", file=sys.stderr)
            return 1
    steps = [(int(m[1]), float(m[2]), float(m[3])) for ln in out.stdout.splitlines() if (m := LINE.match(ln))]
    kept = [s for s in steps if s[0] >= WARMUP]
    if not kept:
        print(out.stdout[-3000:], file=sys.stderr)
        return 1
    step_ms = statistics.median(s[1] for s in kept)
    tokens = batch * block * a.grad_accum * a.nproc
    print(f"device: {torch.cuda.get_device_name(0)}, {a.nproc} rank(s), {a.grad_accum} micro-steps of 12 x 1024 each")
    print(f"median step {step_ms:.1f} ms over iters {kept[0][0]}-{kept[-1][0]}; {tokens / step_ms * 1e3:,.0f} tokens/s")
    print(f"median MFU {statistics.median(s[2] for s in kept):.1f}% (bar >= 50%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
