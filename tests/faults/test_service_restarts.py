"""Redis or the API restarted under a running run and its live subscribers: the run goes on
(no recovery needed), and clients that reconnect with ?after= miss nothing, twice nothing."""

from __future__ import annotations

import signal
import time

from tests.faults.conftest import FINAL, FaultStack, Row, Subscriber, finish, follow, is_final, run_config, statuses
from tests.helpers import wait_for


def live_again(subs: list[Subscriber], t_fault: float, t_back: float) -> float:
    """Until every subscriber gets events the worker made after the restarted part was back;
    returns the seconds from the fault to the last of them getting one."""
    wait_for(lambda: all(s.live_since(t_back) for s in subs), 60, "every subscriber to follow the run live again")
    return max(s.live_since(t_back) or 0.0 for s in subs) - t_fault


def assert_running(stack: FaultStack, run_id: str) -> None:
    ev = stack.newest(run_id)
    assert ev is not None and not is_final(ev), f"the run ended before the fault: make it longer ({ev})"


def check_one_attempt(
    stack: FaultStack, run_id: str, subs: list[Subscriber], row: Row, max_iters: int, every: int
) -> None:
    """The run succeeded in one attempt, with every eval, checkpoint and status (the events
    that are never batched) and every iteration, once, in history and at each subscriber."""
    done, history = finish(stack, run_id, subs, row, max_iters)
    assert done["attempt"] == 1 and statuses(history) == ["running", "succeeded"], (done, statuses(history))
    evals = list(range(0, max_iters + 1, every))
    assert [e["iter"] for e in history if e["type"] == "eval"] == evals
    assert [e["iter"] for e in history if e["type"] == "checkpoint"] == evals[1:]


def test_redis_restarted_mid_run(stack: FaultStack, row: Row) -> None:
    row.fault = "3. Redis restarted twice mid-run (SIGTERM, same port, append-only file)"
    stack.up(workers=1)
    max_iters, eval_interval = 1200, 200
    run_id = stack.submit(run_config(max_iters, eval_interval))
    subs = follow(stack, run_id, 2)
    recover, down = [], []
    for at in (250, 700):
        stack.wait_iter(run_id, at)
        if at == 250:  # a run queued behind it: its message lives only in Redis
            waiting = stack.submit(run_config(20, eval_interval=10))
        assert_running(stack, run_id)
        t_fault = time.time()
        down.append(stack.restart_redis())
        recover.append(live_again(subs, t_fault, time.time()))
    row.recover_s = max(recover)
    row.note = (
        f"Redis down {', '.join(f'{d:.2f}' for d in down)} s; every subscriber live again "
        f"{', '.join(f'{r:.1f}' for r in recover)} s after the fault; WebSocket reconnects {[s.connects - 1 for s in subs]}"
    )
    check_one_attempt(stack, run_id, subs, row, max_iters, eval_interval)
    assert stack.wait_status(waiting, FINAL, timeout=60)["status"] == "succeeded"


def test_api_restarted_mid_run(stack: FaultStack, row: Row) -> None:
    row.fault = "4. API restarted mid-run (SIGTERM, then SIGKILL), 4 WebSocket subscribers"
    stack.up(workers=1)
    max_iters, eval_interval = 3000, 500
    run_id = stack.submit(run_config(max_iters, eval_interval))
    subs = follow(stack, run_id, 4)
    recover, steps = [], []
    for at, sig in ((200, signal.SIGTERM), (1200, signal.SIGKILL)):
        stack.wait_iter(run_id, at)
        assert_running(stack, run_id)
        t_fault = time.time()
        assert stack.api_proc is not None
        stack.api_proc.stop(sig)
        t_down = time.time()
        stack.start_api()
        t_back = time.time()
        recover.append(live_again(subs, t_fault, t_back))
        steps.append(
            f"{sig.name}: stopped in {t_down - t_fault:.1f} s, up again in {t_back - t_down:.1f} s, "
            f"every subscriber live again {recover[-1]:.1f} s after the fault"
        )
    row.recover_s = max(recover)
    row.note = "; ".join(steps)
    check_one_attempt(stack, run_id, subs, row, max_iters, eval_interval)
    assert all(s.connects >= 3 for s in subs), [s.connects for s in subs]
