"""A worker asked to stop (Ctrl-C on `gptjobs up`, a container stop) loses nothing: the run
checkpoints, goes back to the queue, and the next worker resumes it from that checkpoint."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.harness import Stack


def test_worker_shutdown_requeues_and_resumes(tmp_path: Path) -> None:
    with Stack(tmp_path) as stack:
        first = stack.up(train=1).workers[0]
        run_id = stack.submit({"max_iters": 400, "lr_decay_iters": 400, "eval_interval": 100, "eval_iters": 2})["id"]
        stack.wait_iter(run_id, 30)

        assert first.stop(signal.SIGTERM, grace=30) == 0  # Celery's warm shutdown
        run = stack.run(run_id)
        assert run["status"] == "queued" and "resumes from its checkpoint" in run["reason"], run
        events = stack.events(run_id)
        ckpt = [e for e in events if e["type"] == "checkpoint"][-1]
        stopped_at = ckpt["iter"]
        assert events[-1]["type"] == "status" and events[-1]["status"] == "queued"

        stack.start_worker(wait=False)
        done = stack.wait_status(run_id, {"succeeded", "failed", "cancelled"})
        assert done["status"] == "succeeded", done
        assert done["attempt"] == 2
        events = stack.events(run_id)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        resumed = [e for e in events if e["type"] == "status" and e["status"] == "running"][-1]
        assert resumed["from_iter"] == stopped_at and resumed["attempt"] == 2
        iters = [e["iter"] for e in events if e["type"] == "iter"]
        assert iters == list(range(400))  # every iteration once: nothing lost, nothing repeated
