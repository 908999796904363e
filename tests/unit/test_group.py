"""Which rank a failed group names: the launcher's own record of its ranks' ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from worker.group import Group, Plan, describe_failures


def failure(local_rank: int, code: int, tmp_path: Path) -> ProcessFailure:
    return ProcessFailure(
        local_rank=local_rank, pid=1000 + local_rank, exitcode=code, error_file=str(tmp_path / "none")
    )


def test_the_rank_killed_from_outside_is_named_not_the_one_the_launcher_ended(tmp_path: Path) -> None:
    # As torch's launcher lists them: rank 1 found SIGKILLed, then rank 0, which it ended
    # with SIGTERM itself; both in the same second.
    found = {1: failure(1, -signal.SIGKILL, tmp_path), 0: failure(0, -signal.SIGTERM, tmp_path)}
    assert describe_failures(found, tmp_path) == "rank 1 (pid 1001) was killed by SIGKILL (then rank 0 failed)"
    exited = {0: failure(0, -signal.SIGTERM, tmp_path), 1: failure(1, 3, tmp_path)}
    assert describe_failures(exited, tmp_path).startswith("rank 1 (pid 1001) exited with code 3")
    assert describe_failures({0: failure(0, -signal.SIGTERM, tmp_path)}, tmp_path) == (
        "rank 0 (pid 1000) was killed by SIGTERM"
    )


def test_close_kills_the_groups_ranks_left_waiting_and_no_other_process(tmp_path: Path) -> None:
    """A rank stuck in a collective (its peer gone) outlives the close's wait: the close
    kills it, and only the ranks of its own group."""

    def rank(channel: str) -> subprocess.Popen[bytes]:  # a rank's command line, sleeping as if stuck
        argv = [sys.executable, "-c", "import time; time.sleep(120)", "-m", "worker.rank", "--channel", channel]
        return subprocess.Popen(argv)

    mine, other = rank("127.0.0.1:5001"), rank("127.0.0.1:5002")
    try:
        plan = Plan("r1", 1, {}, 1, 1, "127.0.0.1:0", "127.0.0.1:5001", "00", str(tmp_path))
        g = Group(plan, lead=True, log_dir=tmp_path, threads=1, timeout_s=1, addr="127.0.0.1")
        agent_done = threading.Event()
        # The launcher's agent stands for its ranks: it ends when they have.
        g.thread = threading.Thread(target=lambda: (mine.wait(), agent_done.set()), daemon=True)
        g.thread.start()
        g.close(timeout=0.5)
        assert mine.wait(5) == -signal.SIGKILL
        assert agent_done.is_set()
        assert other.poll() is None, "a process of another group was killed"
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()
