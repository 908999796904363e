"""Redis or the API restarted under a running run and its live subscribers: the run goes on
(no recovery needed), and clients that reconnect with ?after= miss nothing, twice nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from tests.faults.conftest import FINAL, Row, Stack, Subscriber, finish, is_final, live_run, run_config, statuses
from tests.harness import wait_for


def live_again(subs: list[Subscriber], t_fault: float, t_back: float) -> float:
    """Until every subscriber gets events the worker made after the restarted part was back;
    returns the seconds from the fault to the last of them getting one."""
    wait_for(lambda: all(s.live_since(t_back) for s in subs), 60, "every subscriber to follow the run live again")
    return max(s.live_since(t_back) or 0.0 for s in subs) - t_fault


def fault_at(stack: Stack, run_id: str, subs: list[Subscriber], at: int, fault: Callable[[], str]) -> tuple[float, str]:
    """At iteration `at` of the still running run, fault() (returning once the part is back,
    with a note on how it went); then the seconds from the fault until every subscriber is
    live again, and the note."""
    stack.wait_iter(run_id, at)
    ev = stack.newest(run_id)
    assert ev is not None and not is_final(ev), f"the run ended before the fault: make it longer ({ev})"
    t_fault = time.time()
    note = fault()
    return live_again(subs, t_fault, time.time()), note


def check_one_attempt(stack: Stack, run_id: str, subs: list[Subscriber], row: Row, max_iters: int, every: int) -> None:
    """The run succeeded in one attempt, with every eval, checkpoint and status (the events
    that are never batched) and every iteration, once, in history and at each subscriber."""
    done, history = finish(stack, run_id, subs, row, max_iters)
    assert done["attempt"] == 1 and statuses(history) == ["running", "succeeded"], (done, statuses(history))
    evals = list(range(0, max_iters + 1, every))
    assert [e["iter"] for e in history if e["type"] == "eval"] == evals
    assert [e["iter"] for e in history if e["type"] == "checkpoint"] == evals[1:]


def test_redis_restarted_mid_run(stack: Stack, row: Row) -> None:
    row.fault = "3. Redis restarted twice mid-run (SIGTERM, same port, append-only file)"
    max_iters, eval_interval = 1200, 200
    run_id, subs = live_run(stack, max_iters, eval_interval, subscribers=2)
    stack.wait_iter(run_id, 250)
    waiting = stack.submit(run_config(20, eval_interval=10))["id"]  # queued behind it: its message lives only in Redis
    restarts = [fault_at(stack, run_id, subs, at, lambda: f"{stack.restart_redis():.2f}") for at in (250, 700)]
    row.recover_s = max(r for r, _ in restarts)
    row.note = (
        f"Redis down {', '.join(down for _, down in restarts)} s; every subscriber live again "
        f"{', '.join(f'{r:.1f}' for r, _ in restarts)} s after the fault; "
        f"WebSocket reconnects {[s.connects - 1 for s in subs]}"
    )
    check_one_attempt(stack, run_id, subs, row, max_iters, eval_interval)
    assert stack.wait_status(waiting, FINAL, timeout=60)["status"] == "succeeded"


def test_api_restarted_mid_run(stack: Stack, row: Row) -> None:
    row.fault = "4. API restarted mid-run (SIGTERM, then SIGKILL), 4 WebSocket subscribers"
    max_iters, eval_interval = 3000, 500
    run_id, subs = live_run(stack, max_iters, eval_interval, subscribers=4)

    def restart_api(sig: signal.Signals) -> str:
        assert stack.api_proc is not None
        t_fault = time.time()
        stack.api_proc.stop(sig)
        t_down = time.time()
        stack.start_api()
        return f"{sig.name}: stopped in {t_down - t_fault:.1f} s, up again in {time.time() - t_down:.1f} s"

    restarts = [
        fault_at(stack, run_id, subs, at, lambda sig=sig: restart_api(sig))
        for at, sig in ((200, signal.SIGTERM), (1200, signal.SIGKILL))
    ]
    row.recover_s = max(r for r, _ in restarts)
    row.note = "; ".join(f"{note}, every subscriber live again {r:.1f} s after the fault" for r, note in restarts)
    check_one_attempt(stack, run_id, subs, row, max_iters, eval_interval)
    assert all(s.connects >= 3 for s in subs), [s.connects for s in subs]
