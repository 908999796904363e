"""Command line: `python -m gpt train --key=value ...` and `python -m gpt sample ...`.

The one place in gpt/ that prints. `train` takes nanoGPT's options unchanged and prints
nanoGPT's familiar lines, with evaluation and checkpoint times on lines of their own.
Under torchrun (`torchrun --standalone --nproc_per_node=2 -m gpt train ...`) every rank
runs it and rank 0 prints.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gpt.logfmt import format_event

USAGE = """usage: python -m gpt train [CONFIG.json] [--key=value ...]
       python -m gpt sample [--out_dir=DIR] [--start=TEXT|FILE:path] [--num_samples=N]
                            [--max_new_tokens=N] [--temperature=T] [--top_k=K] [--seed=S]

train keys are nanoGPT's (train.py): --dataset=shakespeare_char --device=cpu --compile=False
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 ..."""


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """A JSON config file (optional, first) then --key=value pairs, later ones winning."""
    out: dict[str, Any] = {}
    for arg in args:
        if not arg.startswith("--"):
            out.update(json.loads(Path(arg).read_text()))
            continue
        key, sep, value = arg[2:].partition("=")
        if not sep:
            raise SystemExit(f"expected --{key}=VALUE, got {arg!r}\n\n{USAGE}")
        out[key] = value
    return out


def cmd_train(args: list[str]) -> int:
    from gpt.config import ConfigError, make_config

    overrides = parse_overrides(args)
    if "LOCAL_WORLD_SIZE" in os.environ:  # under torchrun: its world is the run's
        local, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
        overrides.setdefault("nproc_per_node", local)
        overrides.setdefault("nnodes", world // local)
    try:
        cfg = make_config(overrides)
    except ConfigError as e:
        for field, reason in e.errors.items():
            print(f"error: {field}: {reason}", file=sys.stderr)
        return 2
    from gpt.train import train

    stop = False

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal stop
        if stop:  # a second Ctrl-C: give up on the checkpoint
            raise KeyboardInterrupt
        stop = True
        print("\nstopping after this iteration (checkpoint first); Ctrl-C again to abort", file=sys.stderr)

    signal.signal(signal.SIGINT, on_sigint)
    status = None  # stays None on the ranks other than 0, which train without a word
    for ev in train(cfg, should_stop=lambda: stop):
        for line in format_event(ev):
            print(line, flush=True)
        if ev["type"] == "status":
            status = ev["status"]
    return {"succeeded": 0, "cancelled": 130, None: 0}.get(status, 1)


def cmd_sample(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m gpt sample", prefix_chars="-")
    p.add_argument("--out_dir", default="out")
    p.add_argument("--ckpt", default="ckpt.pt", help="file in out_dir: ckpt.pt (latest) or best.pt")
    p.add_argument("--start", default="\n", help="prompt text, or FILE:path to read it from a file")
    p.add_argument("--num_samples", type=int, default=10)
    p.add_argument("--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=200)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(args)
    from gpt import sample

    start = Path(a.start[5:]).read_text() if a.start.startswith("FILE:") else a.start
    path = Path(a.out_dir) / a.ckpt
    if not path.exists():
        print(f"error: no checkpoint at {path}", file=sys.stderr)
        return 2
    m = sample.load(path, a.device)
    try:
        m.tokenizer.encode(start)
    except ValueError as e:
        print(f"error: --start: {e}", file=sys.stderr)
        return 2
    for _ in range(a.num_samples):
        text = sample.generate(
            m, start, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k, seed=a.seed
        )[0]
        a.seed += 1  # each sample its own stream, all reproducible
        print(start + text, flush=True)
        print("---------------", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("train", "sample"):
        print(USAGE, file=sys.stderr)
        return 2
    return cmd_train(argv[1:]) if argv[0] == "train" else cmd_sample(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
