"""A training worker lost (SIGKILL, SIGSTOP, killed mid-checkpoint) or a message delivered
twice: the run's lease, the reaper and the fenced writes keep one timeline: exactly one
worker trains a run at a time, and a lost attempt's late writes are refused."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from api.queue import TRAIN_QUEUE, TRAIN_TASK, make_celery
from api.settings import Settings
from tests.faults.conftest import (
    FINAL,
    Event,
    Row,
    Stack,
    Tally,
    check_history,
    check_subscribers,
    finish,
    is_final,
    live_run,
    run_config,
    statuses,
)
from tests.harness import Proc, open_uploads, wait_for


def check_recovered(events: list[Event]) -> Event:
    """One lost attempt, one resumed: running, recovering (with a reason), running from a
    checkpoint at attempt 2, succeeded. Returns attempt 2's first event."""
    assert statuses(events) == ["running", "recovering", "running", "succeeded"], statuses(events)
    status = [e for e in events if e["type"] == "status"]
    assert status[1]["reason"], status[1]
    resumed = status[2]
    assert resumed["attempt"] == 2 and isinstance(resumed.get("from_iter"), int), resumed
    assert events[events.index(resumed) - 1] is status[1]  # nothing of attempt 1 between them
    return resumed


def attempts_started(stack: Stack, run_id: str) -> list[int]:
    """The attempts started, by the `attempt N starting` lines across every worker's log."""
    pattern = re.compile(rf"run {run_id}: attempt (\d+) starting")
    return sorted(int(n) for w in stack.workers for n in pattern.findall(w.text()))


def trainer_of(stack: Stack, run_id: str) -> Proc:
    def found() -> Proc | None:
        return next((w for w in stack.workers if f"run {run_id}: attempt 1 starting" in w.text()), None)

    return wait_for(found, 30, "a worker to start the run")


def reference_losses(stack: Stack, config: dict[str, Any], out_dir: Path) -> dict[int, float]:
    """The same run, uninterrupted, in this process (one torch thread, as the workers)."""
    import torch

    from gpt.config import make_config
    from gpt.train import train

    threads = torch.get_num_threads()
    try:
        cfg = make_config({**config, "out_dir": str(out_dir)}, allow_paths=False)
        events = train(cfg, data_dir=str(stack.root / "datasets"), num_threads=1)
        return {e["iter"]: e["loss"] for e in events if e["type"] == "iter"}
    finally:
        torch.set_num_threads(threads)


def test_worker_killed_mid_run_resumes_from_its_checkpoint(stack: Stack, row: Row, tmp_path: Path) -> None:
    row.fault = "1. train worker SIGKILLed mid-run; a new worker started"
    max_iters = 900
    run_id, subs = live_run(stack, max_iters, eval_interval=300)
    # Past the checkpoint at 300, and far enough that a batch of iter events after it is in
    # the database: the resumed attempt must supersede those too (from its first step on).
    wait_for(lambda: stack.db_max_iter(run_id) >= 300, 60, "iter events after the checkpoint in the database", 0.02)
    t_fault = time.time()
    stack.workers[0].stop(signal.SIGKILL)
    killed_at = stack.newest(run_id)
    assert killed_at is not None and not is_final(killed_at), "the run ended before the kill: make it longer"

    t_new = time.time()
    stack.start_worker(wait=False)
    done, history = finish(stack, run_id, subs, row, max_iters)
    resumed = check_recovered(history)
    row.recover_s = resumed["ts"] - t_fault
    assert resumed["ts"] - t_new < 60, f"resumed {resumed['ts'] - t_new:.1f} s after the new worker started"
    assert resumed["from_iter"] in (300, 600) and resumed["from_iter"] <= killed_at["iter"], (resumed, killed_at)
    assert done["attempt"] == 2 and attempts_started(stack, run_id) == [1, 2]

    # The loss curve goes on as if nothing had happened.
    got = {e["iter"]: e["loss"] for e in history if e["type"] == "iter"}
    want = reference_losses(stack, done["config"], tmp_path / "reference")
    assert sorted(got) == sorted(want) == list(range(max_iters))
    diff = max(abs(got[i] - want[i]) for i in got)
    row.note = (
        f"killed at iter {killed_at['iter']}, resumed from {resumed['from_iter']} "
        f"{resumed['ts'] - t_new:.1f} s after the new worker was started; max |loss - uninterrupted run| = {diff:.1g}"
    )
    assert diff <= 1e-3, row.note


def test_worker_killed_with_no_restarts_left_fails(stack: Stack, row: Row) -> None:
    row.fault = "2. train worker SIGKILLed, max_restarts 0, no new worker"
    stack.up(train=1)
    run_id = stack.submit(run_config(100_000, eval_interval=1000), max_restarts=0)["id"]
    assert stack.run(run_id)["max_restarts"] == 0
    subs = stack.follow(run_id)
    stack.wait_iter(run_id, 20)
    t_fault = time.time()
    stack.workers[0].stop(signal.SIGKILL)

    done = stack.wait_status(run_id, FINAL, timeout=30)
    for s in subs:
        s.finish()
    history = stack.events(run_id)
    final = history[-1]
    row.recover_s = final["ts"] - t_fault  # here: until the run is declared failed
    row.recovered = f"n/a: ended {done['status']} as asked"
    tally = Tally()
    in_db = max((e["iter"] for e in history if e["type"] == "iter"), default=-1) + 1
    check_history(history, in_db, tally)
    check_subscribers(subs, history, tally)
    row.tally(tally)
    assert done["status"] == "failed" and done["reason"], done
    assert done["attempt"] == 1 and statuses(history) == ["running", "failed"], statuses(history)
    assert final["reason"] == done["reason"] and "max_restarts" in final["reason"], final
    assert not tally.problems, tally.problems
    row.note = f"failed {row.recover_s:.1f} s after the kill: {final['reason']!r}"


def _kill_while_saving(worker: Proc, run_dir: Path, full_size: int, timeout: float = 60) -> Path:
    """SIGKILL the worker while a checkpoint's temp file is being written; returns that file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.scandir(run_dir):
            if entry.name.startswith(".ckpt.pt.") and entry.name.endswith(".tmp"):
                try:
                    size = entry.stat().st_size
                except FileNotFoundError:
                    continue
                if size < full_size * 0.9:
                    worker.stop(signal.SIGKILL)
                    return Path(entry.path)
        time.sleep(0.0005)
    raise AssertionError("no checkpoint write caught in progress")


@pytest.mark.store_specific  # a directory's temp file; case 15 is this on S3
def test_worker_killed_while_writing_a_checkpoint(stack: Stack, row: Row) -> None:
    import torch

    row.fault = "5. train worker SIGKILLed during a checkpoint write"
    max_iters = 30
    big = {"n_layer": 4, "n_head": 4, "n_embd": 256, "eval_iters": 2}  # ~38 MB per checkpoint
    run_id, subs = live_run(stack, max_iters, eval_interval=10, **big)
    ckpt = stack.run_dir(run_id) / "ckpt.pt"
    wait_for(ckpt.exists, 90, "the first checkpoint")
    tmp = _kill_while_saving(stack.workers[0], ckpt.parent, ckpt.stat().st_size)
    t_fault = time.time()
    assert tmp.exists(), "the kill came after the write finished"

    before = torch.load(ckpt, map_location="cpu", weights_only=True)  # the previous checkpoint, intact
    assert before["iter_num"] == 10, before["iter_num"]
    stack.start_worker(wait=False)
    _, history = finish(stack, run_id, subs, row, max_iters)
    resumed = check_recovered(history)
    row.recover_s = resumed["ts"] - t_fault
    assert resumed["from_iter"] == 10, resumed
    after = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert after["iter_num"] == max_iters
    assert not tmp.exists(), "the partial checkpoint file was left behind"
    row.note = f"killed writing the checkpoint of iter 20 ({tmp.name}); resumed from 10; the partial file removed"


@pytest.mark.store_specific  # on S3 whatever the suite's store
def test_worker_killed_while_uploading_a_checkpoint_to_s3(s3_stack: Stack, row: Row) -> None:
    """Case 5 where the artifacts are on S3: the checkpoint goes up as a multipart upload,
    which only its completion makes visible; the kill leaves it open, never read."""
    row.fault = "15. train worker SIGKILLed mid-upload of a checkpoint to S3 (moto's server)"
    stack, max_iters = s3_stack, 30
    big = {"n_layer": 4, "n_head": 4, "n_embd": 256, "eval_iters": 2}  # ~38 MB: 8 parts of 5 MiB
    run_id, subs = live_run(stack, max_iters, eval_interval=10, **big)
    store = stack.store

    def uploads() -> list[dict[str, Any]]:
        return open_uploads(store, f"runs/{run_id}/")

    wait_for(lambda: store.exists(f"runs/{run_id}/ckpt.pt"), 90, "the first checkpoint")
    wait_for(uploads, 90, "the second checkpoint's upload to start", 0.005)
    stack.workers[0].stop(signal.SIGKILL)
    t_fault = time.time()
    left_open = uploads()
    assert left_open, "the kill came after the upload completed"

    assert stack.checkpoint(run_id)["iter_num"] == 10  # the previous checkpoint, intact and still the one read
    stack.start_worker(wait=False)
    _, history = finish(stack, run_id, subs, row, max_iters)
    resumed = check_recovered(history)
    row.recover_s = resumed["ts"] - t_fault
    assert resumed["from_iter"] == 10, resumed
    assert stack.checkpoint(run_id)["iter_num"] == max_iters
    row.note = (
        f"killed with {left_open[0]['Key'].rsplit('/', 1)[-1]}'s multipart upload open; resumed from 10; "
        "the open upload is invisible (an S3 lifecycle rule aborts such uploads)"
    )


def test_same_message_delivered_twice(stack: Stack, row: Row) -> None:
    row.fault = "6. the run's queue message sent again (3x: at once, mid-run, after)"
    stack.up(train=2)
    max_iters = 400
    run_id = stack.submit(run_config(max_iters, eval_interval=100))["id"]
    celery = make_celery(Settings(redis_url=stack.redis_url))
    try:

        def send() -> None:
            celery.send_task(TRAIN_TASK, args=[run_id], queue=TRAIN_QUEUE)

        send()  # two messages, two idle workers: both try to claim
        subs = stack.follow(run_id)
        stack.wait_iter(run_id, 150)
        send()  # the idle worker gets it while the other trains
        done, history = finish(stack, run_id, subs, row, max_iters)
        send()  # after the end
    finally:
        celery.close()

    def deliveries() -> int:  # Celery's own line for each task that returned
        return sum(len(re.findall(r"Task worker\.train\[[^\]]+\] succeeded in", w.text())) for w in stack.workers)

    wait_for(lambda: deliveries() >= 4, 30, "the three duplicates to be delivered")
    row.recovered = "yes (trained once)"
    assert done["attempt"] == 1 and statuses(history) == ["running", "succeeded"], (done, statuses(history))
    assert attempts_started(stack, run_id) == [1]
    rows = stack.db_events(run_id)
    assert {ev["attempt"] for ev, _ in rows} == {1} and not any(sup for _, sup in rows)
    row.note = f"{deliveries()} deliveries, 1 attempt"


def test_frozen_worker_is_fenced_off(stack: Stack, row: Row) -> None:
    row.fault = "7. train worker SIGSTOPped until its lease expired, then SIGCONTed"
    max_iters = 1200
    run_id, subs = live_run(stack, max_iters, eval_interval=100, workers=2)
    frozen = trainer_of(stack, run_id)
    stack.wait_iter(run_id, 130)
    t_fault = time.time()
    frozen.freeze()

    # The other worker takes over: attempt 2, from the checkpoint.
    wait_for(lambda: stack.run(run_id)["attempt"] == 2, 60, "attempt 2")
    recovering = next(e for e in stack.events(run_id) if e["type"] == "status" and e["status"] == "recovering")
    frozen.thaw()

    def zombie_returned() -> bool:
        return re.search(r"Task worker\.train\[[^\]]+\] (succeeded in|raised)", frozen.text()) is not None

    wait_for(zombie_returned, 30, "the continued worker's task to return")
    assert stack.run(run_id)["status"] == "running", "attempt 2 ended before the zombie was done: make the run longer"
    meanwhile = stack.checkpoint(run_id)["iter_num"]

    _, history = finish(stack, run_id, subs, row, max_iters)
    resumed = check_recovered(history)
    row.recover_s = resumed["ts"] - t_fault
    # ckpt.pt, read just after the zombie returned, was attempt 2's (or the one it resumed from).
    ours = {e["iter"] for e in history if e["type"] == "checkpoint" and e["attempt"] == 2} | {resumed["from_iter"]}
    assert meanwhile in ours, (meanwhile, ours)
    assert stack.checkpoint(run_id)["iter_num"] == max_iters
    assert attempts_started(stack, run_id) == [1, 2]

    # Nothing of attempt 1 after the recovery: not in the database (superseded rows
    # included), not on the stream.
    late_db = [ev for ev, _ in stack.db_events(run_id) if ev["attempt"] == 1 and ev["seq"] > recovering["seq"]]
    stream = stack.stream_events(run_id)
    at = next(i for i, e in enumerate(stream) if e["seq"] == recovering["seq"])
    late_stream = [e for e in stream[at + 1 :] if e["attempt"] == 1]
    assert not late_db and not late_stream, (late_db[:3], late_stream[:3])
    assert [k for k in stack.artifacts(f"runs/{run_id}") if "/." in k] == []  # no temp file left
    zombie = re.findall(rf"run {run_id}: .*lost.*", frozen.text())
    row.note = f"resumed from iter {resumed['from_iter']}; the continued worker logged: {zombie[:1]}"
