"""Runs end to end against the real processes (see conftest.py): create, follow live and from
history with no gap or duplicate, read as nanoGPT's log, cancel, resume, idempotency."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.harness import TINY, Stack

LONG = {"max_iters": 1_000_000, "lr_decay_iters": 1_000_000, "eval_interval": 1_000_000, "eval_iters": 2}


def _seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


def test_tiny_run_streams_every_event_then_closes(stack: Stack) -> None:
    run = stack.submit(dict(max_iters=60, eval_interval=20, lr_decay_iters=60, warmup_iters=0))
    assert run["status"] == "queued" and run["config"]["n_layer"] == 1
    events, code = stack.stream(run["id"])
    assert code == 1000, stack.log_tail("train")
    assert _seqs(events) == list(range(1, len(events) + 1))  # contiguous, from the start
    assert all(e["run_id"] == run["id"] and e["attempt"] == 1 and "ts" in e for e in events)
    assert events[0]["type"] == "status" and events[0]["status"] == "running"
    assert events[-1]["type"] == "status" and events[-1]["status"] == "succeeded", events[-1]
    assert [e["iter"] for e in events if e["type"] == "eval"] == [0, 20, 40, 60]
    iters = [e["iter"] for e in events if e["type"] == "iter"]
    assert iters[0] == 0 and iters[-1] >= 59 and iters == sorted(set(iters))

    # History agrees with what the socket delivered, page by page and all at once.
    assert stack.events(run["id"], limit=25) == events
    # A client that reconnects with its last seq gets exactly the rest.
    first, _ = stack.stream(run["id"], stop_after=17)
    rest, code = stack.stream(run["id"], after=first[-1]["seq"])
    assert first + rest == events and code == 1000
    # Nothing after the end: closes normally at once.
    assert stack.stream(run["id"], after=events[-1]["seq"], timeout=10) == ([], 1000)

    detail = stack.run(run["id"])
    assert detail["status"] == "succeeded" and detail["finished_at"]
    p = detail["progress"]
    assert p["iter"] == iters[-1] and p["last_seq"] == events[-1]["seq"]
    assert p["best_val_loss"] == min(e["val_loss"] for e in events if e["type"] == "eval")
    assert p["tokens_seen"] == 60 * 4 * 32 and p["median_step_ms"] > 0 and p["fraction"] == 1.0
    # The list carries a glance at each run, from the same events.
    listed = next(r for r in stack.http.get("/runs").json()["runs"] if r["id"] == run["id"])
    last_iter = next(e for e in reversed(events) if e["type"] == "iter")
    assert listed["progress"] == {
        "iter": last_iter["iter"],
        "max_iters": 60,
        "fraction": 1.0,
        "loss": last_iter["loss"],
        "best_val_loss": p["best_val_loss"],
        "mfu": None,
    }

    evals = stack.events(run["id"], type="eval")
    assert [e["iter"] for e in evals] == [0, 20, 40, 60]
    thin = stack.http.get(f"/runs/{run['id']}/events", params={"max_points": 10}).json()
    kinds = [e["type"] for e in thin["events"]]
    assert kinds.count("iter") <= 10 and kinds.count("eval") == 4 and kinds.count("checkpoint") >= 1
    assert thin["events"][-1] == events[-1] and thin["next_after"] == events[-1]["seq"]

    log = stack.http.get(f"/runs/{run['id']}/log").text
    assert "step 20: train loss " in log and f"iter {iters[-1]}: loss " in log and "mfu n/a" in log
    assert log.strip().splitlines()[-1].startswith("run succeeded")
    assert stack.http.get(f"/runs/{run['id']}/log", params={"follow": "true"}).text == log


def test_reconnect_mid_run_then_cancel(stack: Stack) -> None:
    run = stack.submit(LONG)
    first, code = stack.stream(run["id"], stop_after=30)
    assert code is None and _seqs(first) == list(range(1, 31))
    assert stack.run(run["id"])["status"] == "running"
    second, code = stack.stream(run["id"], after=30, stop_after=30)  # live, not history: the run goes on
    assert code is None and _seqs(second) == list(range(31, 61))

    t0 = time.monotonic()
    resp = stack.http.post(f"/runs/{run['id']}/cancel")
    assert resp.status_code == 202, resp.text
    rest, code = stack.stream(run["id"], after=60)
    assert code == 1000 and time.monotonic() - t0 < 30
    events = first + second + rest
    assert _seqs(events) == list(range(1, len(events) + 1))
    assert [e["type"] for e in events[-2:]] == ["checkpoint", "status"]
    assert events[-1]["status"] == "cancelled"
    assert stack.store.exists(f"runs/{run['id']}/ckpt.pt")
    assert stack.events(run["id"]) == events
    detail = stack.run(run["id"])
    assert detail["status"] == "cancelled" and "cancel" in detail["reason"]
    assert stack.http.post(f"/runs/{run['id']}/cancel").status_code == 409


def test_one_worker_runs_one_at_a_time(stack: Stack) -> None:
    busy = stack.submit(LONG)
    stack.wait_status(busy["id"], {"running"})
    waiting = stack.submit(dict(max_iters=10, eval_interval=10))
    doomed = stack.submit(dict(max_iters=10, eval_interval=10))
    time.sleep(1.5)
    assert stack.run(waiting["id"])["status"] == "queued"

    # A queued run is cancelled on the spot, without reaching a worker.
    resp = stack.http.post(f"/runs/{doomed['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    only, code = stack.stream(doomed["id"], timeout=10)
    assert code == 1000 and [(e["seq"], e["type"], e["status"]) for e in only] == [(1, "status", "cancelled")]

    listed = stack.http.get("/runs", params={"status": "queued,running", "limit": 1}).json()
    assert listed["runs"][0]["id"] == waiting["id"] and listed["next_cursor"]  # newest first
    older = stack.http.get("/runs", params={"status": "queued,running", "cursor": listed["next_cursor"]}).json()
    assert busy["id"] in [r["id"] for r in older["runs"]] and waiting["id"] not in [r["id"] for r in older["runs"]]

    assert stack.http.post(f"/runs/{busy['id']}/cancel").status_code == 202
    stack.wait_status(busy["id"], {"cancelled"})
    done = stack.wait_status(waiting["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["reason"]
    assert done["started_at"] >= stack.run(busy["id"])["finished_at"]
    time.sleep(0.5)  # the worker has taken the cancelled run's message by now, and must have skipped it
    after = stack.run(doomed["id"])
    assert after["status"] == "cancelled" and after["attempt"] == 0 and after["started_at"] is None


def test_idempotency_key_returns_the_same_run(stack: Stack) -> None:
    body = {"name": "idem", "config": {**TINY, "max_iters": 5, "eval_interval": 5}}
    headers = {"Idempotency-Key": "k-123"}
    first = stack.http.post("/runs", json=body, headers=headers)
    again = stack.http.post("/runs", json=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = stack.http.post("/runs", json={**body, "name": "other"}, headers=headers)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    assert stack.http.post("/runs", json=body).json()["id"] != first.json()["id"]  # no key: a new run
    for r in stack.http.get("/runs", params={"status": "queued,running"}).json()["runs"]:
        stack.http.post(f"/runs/{r['id']}/cancel")


def test_unknown_run_socket_closes_4404_and_health(stack: Stack) -> None:
    assert stack.stream("nope", timeout=10) == ([], 4404)
    assert stack.http.get("/healthz").json() == {"database": "ok", "redis": "ok"}


def _strict_json(text: str) -> Any:
    """JSON as the spec has it: Python's parser would take NaN and Infinity, a browser's would not."""

    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_a_diverging_run_fails_and_says_why(stack: Stack) -> None:
    # A learning rate this large makes the loss NaN within a few steps (as in tests/unit/test_train.py).
    run = stack.submit(
        dict(max_iters=200, lr_decay_iters=200, learning_rate=1e6, min_lr=0, warmup_iters=0, grad_clip=0)
    )
    events, code = stack.stream(run["id"])
    assert code == 1000, stack.log_tail("train")
    final = events[-1]
    assert final["type"] == "status" and final["status"] == "failed", final
    assert "diverged" in final["reason"] and "learning_rate" in final["reason"]
    assert [e["code"] for e in events if e["type"] == "warning"][-1] == "nan_loss"
    assert len([e for e in events if e["type"] == "iter"]) < 200  # it stopped, not 200 iters of nan

    resp = stack.http.get(f"/runs/{run['id']}")
    detail = _strict_json(resp.text)
    assert resp.status_code == 200 and detail["status"] == "failed" and detail["reason"] == final["reason"]
    assert _strict_json(stack.http.get(f"/runs/{run['id']}/events").text)["events"] == events
    assert "diverged" in stack.http.get(f"/runs/{run['id']}/log").text.strip().splitlines()[-1]


def test_a_name_is_a_label_never_a_path(stack: Stack) -> None:
    name = "../escape/../../etc/passwd"
    body = {"name": name, "config": {**TINY, "max_iters": 5, "eval_interval": 5, "warmup_iters": 0}}
    resp = stack.http.post("/runs", json=body)
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert run["name"] == name and run["config"]["out_dir"] == f"runs/{run['id']}"  # stored verbatim
    done = stack.wait_status(run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded" and done["name"] == name, done["reason"]
    assert stack.store.exists(f"runs/{run['id']}/ckpt.pt")
    assert not (stack.data_dir / "escape").exists() and not (stack.data_dir.parent / "escape").exists()
    assert any(r["name"] == name for r in stack.http.get("/runs").json()["runs"])


def test_oversize_body_is_413_over_a_real_socket(stack: Stack) -> None:
    # 1 MiB, the default GPTJOBS_MAX_BODY_BYTES: refused unread, then the connection is closed.
    too_big = {"detail": "request body over 1048576 bytes (GPTJOBS_MAX_BODY_BYTES)"}
    chunked = (b" " * 65536 for _ in range(32))
    for content in (b" " * (1 << 20) + b"{}", chunked):
        resp = stack.http.post("/runs", content=content, headers={"content-type": "application/json"})
        assert resp.status_code == 413 and resp.json() == too_big
    assert stack.http.get("/healthz").status_code == 200  # the client reconnects as usual
