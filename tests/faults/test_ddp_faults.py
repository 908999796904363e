"""Runs on several devices, broken on purpose: a rank SIGKILLed (the run resumes from its
checkpoint, or past max_restarts fails naming the rank), and a run over two workers (two
"machines" on loopback, c10d rendezvous) that loses one of them and resumes once a second
is back. The lease, the reaper and the fenced writes keep one timeline throughout."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

from tests.faults.conftest import (
    FINAL,
    Row,
    Stack,
    Tally,
    check_history,
    check_subscribers,
    finish,
    run_config,
    statuses,
)
from tests.harness import Proc, wait_for

TWO_RANKS: dict[str, Any] = {"nproc_per_node": 2, "gradient_accumulation_steps": 2}
GROUP = {"GPTJOBS_RENDEZVOUS_TIMEOUT_S": "8", "GPTJOBS_NODE_ADDR": "127.0.0.1"}
# The kill must land between the checkpoints at 100 and 200 once the database holds iter
# events past 100; it gets them in batches up to 1 s old by default, which a fast two-rank
# run (a few ms a step) outruns by a whole checkpoint interval.
PROMPT_DB = {"GPTJOBS_ITER_FLUSH_S": "0.1"}


def ranks_of(stack: Stack, run_id: str, n: int = 2, timeout: float = 90) -> dict[int, int]:
    """{rank: pid} of the run's ranks on the stack's workers, once n are up."""
    return wait_for(
        lambda: r if len(r := {k: v for w in stack.workers for k, v in w.ranks().items()}) >= n else None,
        timeout,
        f"run {run_id}'s {n} ranks",
    )


def test_rank_killed_mid_run_resumes_from_its_checkpoint(stack: Stack, row: Row) -> None:
    row.fault = "9. a rank of a 2-rank run SIGKILLed mid-run"
    max_iters = 300
    stack.env.update(PROMPT_DB)
    stack.up(train=0)
    stack.start_worker("train", nproc=2)
    run_id = stack.submit(run_config(max_iters, eval_interval=100, **TWO_RANKS))["id"]
    subs = stack.follow(run_id)
    ranks = ranks_of(stack, run_id)
    wait_for(lambda: stack.db_max_iter(run_id) >= 110, 90, "iter events past the checkpoint at 100", 0.02)
    t_fault = time.time()
    os.kill(ranks[1], signal.SIGKILL)

    done, history = finish(stack, run_id, subs, row, max_iters)
    assert statuses(history) == ["running", "recovering", "running", "succeeded"], statuses(history)
    recovering = next(e for e in history if e["type"] == "status" and e["status"] == "recovering")
    assert re.search(rf"rank 1 \(pid {ranks[1]}\) was killed by SIGKILL", recovering["reason"]), recovering
    assert "restart 1 of 3" in recovering["reason"], recovering
    resumed = next(e for e in history if e["type"] == "status" and e.get("from_iter") is not None)
    assert resumed["from_iter"] == 100 and resumed["attempt"] == 2 and done["restarts"] == 1, (resumed, done)
    row.recover_s = resumed["ts"] - t_fault
    row.note = f"resumed from {resumed['from_iter']}: {recovering['reason'][:120]}"


def test_rank_killed_with_no_restarts_left_fails_naming_it(stack: Stack, row: Row) -> None:
    row.fault = "10. rank 0 of a 2-rank run SIGKILLed, max_restarts 0"
    stack.up(train=0)
    stack.start_worker("train", nproc=2)
    run_id = stack.submit(run_config(100_000, eval_interval=1000, **TWO_RANKS), max_restarts=0)["id"]
    subs = stack.follow(run_id)
    ranks = ranks_of(stack, run_id)
    stack.wait_iter(run_id, 20, timeout=90)
    t_fault = time.time()
    os.kill(ranks[0], signal.SIGKILL)
    done = stack.wait_status(run_id, FINAL, timeout=60)
    for s in subs:
        s.finish()
    history = stack.events(run_id)
    row.recover_s = history[-1]["ts"] - t_fault
    row.recovered = f"n/a: ended {done['status']} as asked"
    tally = Tally()
    check_history(history, max(e["iter"] for e in history if e["type"] == "iter") + 1, tally)
    check_subscribers(subs, history, tally)
    row.tally(tally)
    assert done["status"] == "failed" and statuses(history) == ["running", "failed"], (done, statuses(history))
    reason = done["reason"]
    assert re.search(rf"^rank 0 \(pid {ranks[0]}\) was killed by SIGKILL", reason), reason
    assert "max_restarts (0) is used up" in reason and history[-1]["reason"] == reason
    assert not tally.problems, tally.problems
    wait_for(lambda: not stack.workers[0].ranks(), 30, "rank 1 to end too")
    row.note = f"failed {row.recover_s:.1f} s after the kill: {reason[:100]!r}"


def test_two_workers_form_one_run_and_resume_after_losing_one(stack: Stack, row: Row) -> None:
    row.fault = "11. a run over 2 workers (nnodes 2, loopback): one SIGKILLed, a new one started later"
    max_iters = 300
    stack.env.update(GROUP | PROMPT_DB)
    stack.up(train=2)
    run_id = stack.submit(run_config(max_iters, eval_interval=100, nnodes=2, gradient_accumulation_steps=2))["id"]
    subs = stack.follow(run_id)
    ranks = ranks_of(stack, run_id)
    lead = next(w for w in stack.workers if f"run {run_id}: attempt 1 starting" in w.text())
    other = next(w for w in stack.workers if w is not lead)
    assert "joining attempt 1's group" in other.text() and len(lead.ranks()) == len(other.ranks()) == 1, ranks
    wait_for(lambda: stack.db_max_iter(run_id) >= 110, 90, "iter events past the checkpoint at 100", 0.02)
    t_fault = time.time()
    other.stop(signal.SIGKILL)  # a machine lost: its rank dies with it

    # The lead's own rank fails with it; the run goes back to the queue, and while only one
    # worker is left, its group does not form within the timeout and it waits again.
    def unformed() -> Any:
        return next((e for e in stack.events(run_id) if "did not form" in (e.get("reason") or "")), None)

    waited = wait_for(unformed, 60, "a rendezvous to time out")
    assert waited["status"] == "queued", waited
    t_new = time.time()
    third: Proc = stack.start_worker(wait=False)

    done, history = finish(stack, run_id, subs, row, max_iters)
    seen = statuses(history)
    assert seen[:2] == ["running", "recovering"] and seen[-2:] == ["running", "succeeded"], seen
    assert set(seen[2:-2]) <= {"running", "queued"}, seen
    resumed = [e for e in history if e["type"] == "status" and e.get("from_iter") is not None]
    assert [e["from_iter"] for e in resumed] == [100], resumed
    assert resumed[0]["world_size"] == 2 and done["restarts"] == 1, (resumed[0], done)
    assert re.search(rf"run {run_id}: (joining attempt \d+'s group|attempt \d+ starting)", third.text())
    lost = next(e for e in history if e["type"] == "status" and e["status"] == "recovering")
    row.recover_s = resumed[0]["ts"] - t_fault
    row.note = (
        f"resumed from 100 {resumed[0]['ts'] - t_new:.1f} s after the new worker was started; "
        f"{seen.count('queued')} group(s) did not form meanwhile; the loss: {lost['reason'][:90]!r}"
    )
