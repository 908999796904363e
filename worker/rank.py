"""One rank of a run on several devices: `python -m worker.rank --config JSON --channel HOST:PORT
--parent PID --data-dir DIR --threads N`, started by torch's elastic launcher (worker/group.py),
which sets RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous for gpt.train.

Every rank trains (gpt.train under its launcher: seed + rank, its share of each iteration);
global rank 0 also connects to the worker holding the run (worker/channel.py) and sends it
the events, asks it before a checkpoint takes its name, and hears its stops. The channel's
key comes in GPTJOBS_CHANNEL_KEY (the environment, not the command line, which anyone on
the machine can read).

A rank dies with its worker (PR_SET_PDEATHSIG): a worker killed outright must not leave its
ranks training, holding its devices, with nobody to tell.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys

from worker.channel import RankLine


def _die_with(parent: int) -> None:
    with contextlib.suppress(OSError):  # not glibc: the rank then ends when its channel or peers do
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the worker died before the line above: nobody would stop us
        sys.exit(f"rank {os.environ.get('RANK')}: the worker (pid {parent}) is gone")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.rank")
    ap.add_argument("--config", required=True, help="the run's TrainConfig as JSON, paths resolved")
    ap.add_argument("--channel", required=True, help="HOST:PORT of the worker holding the run")
    ap.add_argument("--parent", type=int, required=True, help="the pid of the worker that started us")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads of this rank")
    args = ap.parse_args(argv)
    _die_with(args.parent)
    key = bytes.fromhex(os.environ.pop("GPTJOBS_CHANNEL_KEY"))

    from gpt.config import make_config
    from gpt.train import train

    cfg = make_config(json.loads(args.config))
    line = None
    if os.environ["RANK"] == "0":
        host, _, port = args.channel.rpartition(":")
        line = RankLine((host, int(port)), key)
    events = train(
        cfg,
        should_stop=line.should_stop if line else None,
        before_save=line.fence if line else None,
        data_dir=args.data_dir,
        num_threads=args.threads,
    )
    for ev in events:
        assert line is not None  # only rank 0 yields
        line.emit(ev)
    if line is not None:
        line.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
