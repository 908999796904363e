"""The API, and the sweep controller in it, restarted mid-sweep: by SIGTERM (it gives its
lease up) and by SIGKILL (the lease lapses, a run may be added but not sent, a trial asked
but its run not added). Either way the sweep ends with every grid point run exactly once,
never more than max_concurrent at a time, and Optuna's study agreeing with the runs."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from typing import Any

import optuna

from api import study
from tests.faults.conftest import Row, Stack
from tests.harness import TINY, wait_for

GRID = [1e-3, 2e-3, 4e-3, 8e-3]
CONFIG = {"max_iters": 150, "lr_decay_iters": 150, "eval_interval": 50, "warmup_iters": 0}


def _t(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else time.time()


def restarted_mid_sweep(stack: Stack, row: Row, sig: signal.Signals) -> None:
    stack.env["GPTJOBS_SWEEP_INTERVAL_S"] = "0.2"
    stack.up(train=1)
    body = {
        "config": TINY | CONFIG,
        "parameters": {"learning_rate": {"values": GRID}},
        "method": "grid",
        "max_concurrent": 2,
    }
    resp = stack.http.post("/sweeps", json=body)
    assert resp.status_code == 201, resp.text
    sweep_id = resp.json()["id"]

    def first_ended() -> dict[str, Any] | None:
        stack.check()
        sweep = stack.http.get(f"/sweeps/{sweep_id}").json()
        return sweep if any(r["status"] == "succeeded" for r in sweep["runs"]) else None

    # Just as the first run ends: the controller is about to tell Optuna, ask for the next
    # trial, add its run and send it.
    wait_for(first_ended, 120, "the sweep's first run to end", 0.05)
    assert stack.api_proc is not None
    t_fault = time.time()
    stack.api_proc.stop(sig)
    stack.start_api()
    t_back = time.time()

    def ended() -> dict[str, Any] | None:
        stack.check()
        sweep = stack.http.get(f"/sweeps/{sweep_id}").json()
        return sweep if sweep["status"] != "running" else None

    sweep = wait_for(ended, 180, "the sweep to end", 0.2)
    runs = stack.http.get("/runs", params={"sweep": sweep_id}).json()["runs"]
    # From the fault to the controller's first act after it: the next run it added.
    after = [_t(r["created_at"]) - t_fault for r in runs if _t(r["created_at"]) > t_back]
    row.recover_s = min(after, default=None)
    points = sorted(r["params"]["learning_rate"] for r in runs)
    row.duplicated = len(points) - len(set(points))
    row.lost = len(set(GRID) - set(points))
    row.recovered = "yes" if sweep["status"] == "succeeded" else f"no ({sweep['status']}: {sweep['reason']})"
    row.note = f"API {sig.name} as run 1 of 4 ended; {len(runs)} runs, each point once: {points == sorted(GRID)}"
    assert sweep["status"] == "succeeded", (sweep, stack.api_log())
    assert points == sorted(GRID), runs  # each point exactly once
    assert all(r["status"] == "succeeded" for r in runs), runs
    edges = sorted([(_t(r["created_at"]), 1) for r in runs] + [(_t(r["finished_at"]), -1) for r in runs])
    at_once = [sum(step for _, step in edges[: i + 1]) for i in range(len(edges))]
    assert max(at_once) <= 2, edges

    st = study.storage(stack.database_url)
    try:
        trials = optuna.load_study(study_name=study.study_name(sweep_id), storage=st).get_trials()
    finally:
        st.engine.dispose()
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), trials
    told = {t.number: t.value for t in trials}
    assert told == {r["trial"]: r["best_val_loss"] for r in sweep["runs"]}  # valued by each run's best


def test_api_sigtermed_mid_sweep(stack: Stack, row: Row) -> None:
    row.fault = "13. API (the sweep controller) SIGTERMed mid-sweep, grid of 4, max_concurrent 2"
    restarted_mid_sweep(stack, row, signal.SIGTERM)


def test_api_sigkilled_mid_sweep(stack: Stack, row: Row) -> None:
    row.fault = "14. API (the sweep controller) SIGKILLed mid-sweep, grid of 4, max_concurrent 2"
    restarted_mid_sweep(stack, row, signal.SIGKILL)
