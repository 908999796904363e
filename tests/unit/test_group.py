"""Which rank a failed group names: the launcher's own record of its ranks' ends."""

from __future__ import annotations

import signal
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from worker.group import describe_failures


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
