"""Sweeps against the real parts (a redis-server, one Celery training worker, `gptjobs serve`
with the controller inside, SQLite): a grid over four learning rates from a YAML file with
the CLI, a random search that ASHA prunes through the Python client, the checks made before
anything is queued, a cancelled sweep, the owner's active-runs limit, and another owner's
view. The one worker trains the runs one after another, so the sweeps are small and short."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import gptjobs
from tests.harness import ROOT, TINY, Stack, wait_for

SHORT = TINY | {"max_iters": 60, "lr_decay_iters": 60, "eval_interval": 20, "warmup_iters": 0}
GRID = [3e-3, 1e-2, 3e-2, 1000.0]  # the last one diverges at once
LIMIT = 4  # GPTJOBS_MAX_ACTIVE_RUNS


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"GPTJOBS_SWEEP_INTERVAL_S": "0.3", "GPTJOBS_IDLE_CHECK_S": "1", "GPTJOBS_MAX_ACTIVE_RUNS": str(LIMIT)}
    with Stack(tmp_path_factory.mktemp("sweeps"), env=env) as s:
        yield s.up(train=1, key="alice")


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[gptjobs.Client]:
    with gptjobs.Client(stack.url, stack.key) as c:
        yield c


def cli(stack: Stack, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "GPTJOBS_SERVER": stack.url, "GPTJOBS_KEY": stack.key or ""}
    argv = [sys.executable, "-m", "api.cli", *args]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _t(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else time.time()


def most_at_once(runs: list[dict[str, Any]]) -> int:
    """The most runs queued or running at one instant, from when each was added to its end."""
    edges = sorted([(_t(r["created_at"]), 1) for r in runs] + [(_t(r["finished_at"]), -1) for r in runs])
    n = most = 0
    for _, step in edges:
        n += step
        most = max(most, n)
    return most


def best_val(stack: Stack, run_id: str) -> float | None:
    vals = [e["val_loss"] for e in stack.events(run_id, type="eval") if isinstance(e.get("val_loss"), float)]
    return min(vals) if vals else None


def sweep_runs(stack: Stack, sweep_id: str) -> list[dict[str, Any]]:
    resp = stack.http.get("/runs", params={"sweep": sweep_id, "limit": 200})
    assert resp.status_code == 200, resp.text
    return list(resp.json()["runs"])


def test_a_grid_of_four_learning_rates_from_a_yaml_file(stack: Stack, tmp_path: Path) -> None:
    spec = {
        "name": "lr grid",
        "config": SHORT,
        "parameters": {"learning_rate": {"values": GRID}},
        "method": "grid",
        "max_concurrent": 2,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    made = cli(stack, "sweep", "create", str(path))
    assert made.returncode == 0, made.stderr
    sweep_id = made.stdout.strip()
    watched = cli(stack, "sweep", "watch", sweep_id)  # not a terminal: a line per change, the table at the end
    assert watched.returncode == 0, (watched.stdout, watched.stderr, stack.api_log())

    sweep = stack.http.get(f"/sweeps/{sweep_id}").json()
    assert sweep["status"] == "succeeded" and sweep["left"] == 0 and sweep["max_runs"] == 4, sweep
    runs = sweep_runs(stack, sweep_id)
    assert sorted(r["params"]["learning_rate"] for r in runs) == sorted(GRID)  # every point once
    assert all(r["sweep"] == sweep_id and r["config"]["learning_rate"] == r["params"]["learning_rate"] for r in runs)
    assert most_at_once(runs) <= 2, [(r["created_at"], r["finished_at"]) for r in runs]
    by_lr = {r["params"]["learning_rate"]: r for r in runs}
    absurd = by_lr[1000.0]
    assert absurd["status"] == "failed" and "loss became nan" in absurd["reason"], absurd
    assert all(by_lr[lr]["status"] == "succeeded" for lr in GRID[:3]), runs
    bests = {r["id"]: best_val(stack, r["id"]) for r in runs}
    lowest = min((v, k) for k, v in bests.items() if v is not None)[1]
    assert sweep["best"]["run"] == lowest and sweep["best"]["val_loss"] == pytest.approx(bests[lowest])
    assert {r["id"]: r["best_val_loss"] for r in sweep["runs"]} == pytest.approx(bests)
    assert sweep["runs_by_status"] == {"succeeded": 3, "failed": 1}
    # What the user saw: each run's change, then the table with the best starred.
    assert re.search(rf"#\d+ {absurd['id']} learning_rate=1000 failed: loss became nan", watched.stdout)
    table = watched.stdout[watched.stdout.index(f"sweep {sweep_id}") :]
    assert re.search(rf"{lowest}\s+succeeded\s+\S+\s+60/60\s+\d\.\d{{4}}\s+\*", table), table


def test_random_search_with_asha_prunes_the_runs_behind(stack: Stack, client: gptjobs.Client) -> None:
    base = TINY | {"max_iters": 400, "lr_decay_iters": 400, "eval_interval": 25, "warmup_iters": 0, "min_lr": 1e-6}
    sweep = client.sweeps.create(
        {
            "config": base,
            "parameters": {"learning_rate": {"min": 1e-5, "max": 3e-2, "log": True}},
            "method": "random",
            "max_runs": 6,
            "max_concurrent": 2,
            "early_stop": {"type": "asha", "min_iter": 50, "reduction_factor": 2},
            "seed": 1,
        }
    )
    assert sweep.status == "running" and sweep.left == 6 and sweep.parameters["learning_rate"]["type"] == "float"
    done = client.sweeps.wait(sweep.id, timeout=300, poll_s=0.5)
    assert done.status == "succeeded", (done, stack.api_log())
    assert len(done.runs) == 6 and len({r.params["learning_rate"] for r in done.runs}) == 6
    pruned = [r for r in done.runs if r.status == "pruned"]
    assert pruned, [(r.status, r.best_val_loss, r.params) for r in done.runs]
    cut = re.compile(
        r"pruned at iter (\d+): val loss (\d+\.\d{4}), rung keeps runs at or below (\d+\.\d{4}) "
        r"\(the best \d+ of the \d+ runs at rung \d+\); checkpoint saved at iter (\d+)"
    )
    for r in pruned:
        m = cut.fullmatch(r.reason or "")
        assert m, r.reason
        at, value, keep, stopped = int(m[1]), float(m[2]), float(m[3]), int(m[4])
        assert at >= 50 and value > keep and at <= stopped < 400, r.reason
        history = stack.events(r.id)
        assert history[-1]["status"] == "pruned" and history[-2]["type"] == "checkpoint", history[-3:]
        assert history[-2]["iter"] == stopped
    assert all(r.status in ("succeeded", "pruned") for r in done.runs), done.runs
    assert most_at_once([run.raw for run in client.sweeps.runs(sweep.id)]) <= 2
    assert done.best is not None and done.best.status == "succeeded"


def test_every_combination_is_checked_before_anything_is_queued(stack: Stack) -> None:
    before = len(stack.http.get("/runs").json()["runs"])

    def refused(body: dict[str, Any]) -> list[dict[str, Any]]:
        resp = stack.http.post("/sweeps", json={"config": SHORT, "method": "grid", **body})
        assert resp.status_code == 422, resp.text
        return list(resp.json()["detail"])

    errors = refused({"parameters": {"n_embd": {"values": [32, 33]}, "learning_rate": {"values": [1e-3]}}})
    assert [e["loc"] for e in errors] == [["body", "parameters"]], errors
    assert "n_embd=33, learning_rate=0.001: config.n_embd must be divisible by n_head" in errors[0]["msg"]
    errors = refused({"parameters": {"dropout": {"values": [0.1]}}, "config": {**SHORT, "n_layer": 0}})
    assert [e["loc"] for e in errors] == [["body", "config", "n_layer"]], errors  # the base's own fault
    errors = refused({"parameters": {"learning_rate": {"values": [1e-3]}}, "max_concurrent": LIMIT + 1})
    assert errors[0]["loc"] == ["body", "max_concurrent"] and "GPTJOBS_MAX_ACTIVE_RUNS" in errors[0]["msg"]
    errors = refused({"parameters": {"learning_rate": {"min": 1e-4, "max": 1e-2}}, "method": "grid"})
    assert errors[0]["loc"] == ["body", "parameters", "learning_rate"] and "list of values" in errors[0]["msg"]
    errors = refused({"parameters": {"learning_rate": {"min": 1e-4, "max": 1e-2}}, "method": "tpe"})
    assert errors[0]["loc"] == ["body", "max_runs"], errors
    errors = refused({"parameters": {"learning_rate": {"min": 0, "max": 1e-2, "log": True}}, "method": "random"})
    assert errors[0]["loc"][:3] == ["body", "parameters", "learning_rate"] and "min > 0" in errors[0]["msg"]
    errors = refused({"parameters": {"lr": {"values": [1]}}})
    assert errors[0]["loc"] == ["body", "parameters", "lr"] and "unknown key" in errors[0]["msg"]
    assert len(stack.http.get("/runs").json()["runs"]) == before  # nothing was queued


def test_a_cancelled_sweep_cancels_its_queued_and_running_runs(stack: Stack, client: gptjobs.Client) -> None:
    long = TINY | {"max_iters": 20000, "lr_decay_iters": 20000, "eval_interval": 1000}
    sweep = client.sweeps.create(
        {"config": long, "parameters": {"learning_rate": {"values": [1e-3, 2e-3, 3e-3]}}, "method": "grid"}
    )
    assert sweep.max_concurrent == 3  # the default: min(4, max_runs, the limit)

    def one_running() -> gptjobs.Sweep | None:
        w = client.sweeps.get(sweep.id)
        return w if w.runs_by_status.get("running") == 1 and w.runs_by_status.get("queued") == 2 else None

    before = wait_for(one_running, 60, "one run running, two queued", 0.2)
    running = next(r for r in before.runs if r.status == "running")
    out = cli(stack, "sweep", "cancel", sweep.id)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.strip() == f"sweep {sweep.id} cancelled; stopping {running.id} (each checkpoints first)"
    cancelled = client.sweeps.get(sweep.id)
    assert cancelled.status == "cancelled" and cancelled.left == 0
    queued = [r for r in cancelled.runs if r.id != running.id]
    assert all(r.status == "cancelled" and r.reason == "its sweep was cancelled" for r in queued), cancelled.runs
    ended = client.runs.wait(running.id, timeout=60)
    assert ended.status == "cancelled", ended
    assert stack.events(running.id)[-2]["type"] == "checkpoint"
    time.sleep(1)  # a few controller passes: nothing more starts
    assert len(client.sweeps.get(sweep.id).runs) == 3
    with pytest.raises(gptjobs.Conflict):
        client.sweeps.cancel(sweep.id)


def test_a_sweeps_runs_count_toward_the_owners_active_runs(
    stack: Stack, client: gptjobs.Client, tmp_path: Path
) -> None:
    long = TINY | {"max_iters": 20000, "lr_decay_iters": 20000, "eval_interval": 1000}
    others = [stack.submit(long)["id"] for _ in range(LIMIT - 1)]  # one running, the rest queued
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"config": SHORT, "parameters": {"learning_rate": {"values": [1e-3, 3e-3]}}}))
    made = cli(stack, "sweep", "create", str(path))  # a JSON file this time; grid is not the default
    assert made.returncode == 2 and "max_runs" in made.stderr, (made.stdout, made.stderr)
    path.write_text(path.read_text()[:-1] + ', "method": "grid"}')
    made = cli(stack, "sweep", "create", str(path))
    assert made.returncode == 0, made.stderr
    sweep = client.sweeps.get(made.stdout.strip())
    assert sweep.max_concurrent == 2
    time.sleep(2)  # several controller passes: the one slot left is all it gets
    assert len(client.sweeps.get(sweep.id).runs) == 1
    resp = stack.http.post("/runs", json={"config": SHORT})
    assert resp.status_code == 429 and "GPTJOBS_MAX_ACTIVE_RUNS" in resp.text, resp.text  # the sweep's run counts
    for run_id in others:
        assert stack.http.post(f"/runs/{run_id}/cancel").status_code in (200, 202)
    done = client.sweeps.wait(sweep.id, timeout=180, poll_s=0.5)
    assert done.status == "succeeded" and len(done.runs) == 2, done


def test_another_owner_gets_404_on_the_sweep_and_its_runs(stack: Stack, client: gptjobs.Client) -> None:
    sweep = client.sweeps.list()[0]
    run_id = client.sweeps.get(sweep.id).runs[0].id
    bob = stack.create_key("bob")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {bob}"}, timeout=30) as other:
        for path in (f"/sweeps/{sweep.id}", f"/runs/{run_id}", f"/runs/{run_id}/events"):
            assert other.get(path).status_code == 404, path
        assert other.post(f"/sweeps/{sweep.id}/cancel").status_code == 404
        assert other.get("/runs", params={"sweep": sweep.id}).status_code == 404
        assert other.get("/sweeps").json() == {"sweeps": []}
    assert stack.http.get(f"/sweeps/{sweep.id}").status_code == 200
