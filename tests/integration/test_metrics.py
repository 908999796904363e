"""GET /metrics against the real stack: scrape, do something, scrape again, and check that
the numbers moved as they should."""

from __future__ import annotations

import json
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tests.harness import Stack, app_client, wait_for

LONG = {"max_iters": 1_000_000, "lr_decay_iters": 1_000_000, "eval_interval": 1_000_000, "eval_iters": 2}
HIST = "gptjobs_http_request_duration_seconds"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(stack: Stack) -> Samples:
    resp = stack.http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain"), resp.headers
    return parse(resp.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def has(samples: Samples, name: str, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in samples


def test_counts_move_with_a_run_requests_and_sockets(stack: Stack) -> None:
    before = scrape(stack)
    assert value(before, "gptjobs_metrics_source_up", source="database") == 1
    assert value(before, "gptjobs_metrics_source_up", source="redis") == 1
    assert {"queued", "running", "succeeded", "failed", "cancelled"} <= {
        dict(labels)["status"] for name, labels in before if name == "gptjobs_runs"
    }

    run = stack.submit(dict(max_iters=10, lr_decay_iters=10, eval_interval=5, warmup_iters=0))
    run_id = run["id"]
    assert stack.wait_status(run_id, {"succeeded", "failed"})["status"] == "succeeded", stack.log_tail("train")
    streamed, code = stack.stream(run_id)  # a finished run: its history, then a normal close
    assert code == 1000 and streamed[-1]["status"] == "succeeded"
    events = stack.events(run_id)
    assert streamed == events
    missing = "0123456789abcdef"
    assert stack.http.get(f"/runs/{missing}").status_code == 404
    assert stack.http.get(f"/no/such/{missing}").status_code == 404

    after = scrape(stack)
    grew = value(after, "gptjobs_runs", status="succeeded") - value(before, "gptjobs_runs", status="succeeded")
    assert grew >= 1
    assert value(after, "gptjobs_events_total") - value(before, "gptjobs_events_total") >= len(events) > 10

    def count(s: Samples, method: str, route: str, status: str) -> float:
        return value(s, f"{HIST}_count", method=method, route=route, status=status)

    # By route template, never the raw path; a path no route matches is `unmatched`.
    assert count(after, "GET", "/runs/{run_id}", "404") - count(before, "GET", "/runs/{run_id}", "404") >= 1
    assert count(after, "GET", "unmatched", "404") - count(before, "GET", "unmatched", "404") >= 1
    assert count(after, "POST", "/runs", "201") - count(before, "POST", "/runs", "201") >= 1
    assert (
        count(after, "GET", "/runs/{run_id}/events", "200") - count(before, "GET", "/runs/{run_id}/events", "200") >= 1
    )
    inf = {"method": "GET", "route": "/runs/{run_id}", "status": "404", "le": "+Inf"}
    assert value(after, f"{HIST}_bucket", **inf) == count(after, "GET", "/runs/{run_id}", "404")
    routes = {dict(labels).get("route") for name, labels in after if name.startswith(HIST)}
    assert not any(missing in r or run_id in r for r in routes if r), routes
    assert "/metrics" not in routes  # the scrapes themselves are left out

    # The socket above has closed; the gauge is back where it was (the handler may finish a
    # moment after the client saw the close).
    wait_for(
        lambda: value(scrape(stack), "gptjobs_websocket_clients") == value(before, "gptjobs_websocket_clients"),
        10,
        "the WebSocket gauge to come back down",
    )


def test_queue_depth_throughput_and_open_sockets_while_a_run_trains(stack: Stack) -> None:
    r = redis.Redis.from_url(stack.redis_url)
    ws_before = value(scrape(stack), "gptjobs_websocket_clients")
    busy = stack.submit(LONG)["id"]
    waiting: str | None = None
    try:
        # Throughput: the running run's newest iter event on its stream.
        samples = wait_for(
            lambda: (s := scrape(stack)) and has(s, "gptjobs_run_tokens_per_second", run_id=busy) and s,
            90,
            "the running run's tokens/s",
        )
        assert value(samples, "gptjobs_runs", status="running") >= 1
        tokens_per_s = value(samples, "gptjobs_run_tokens_per_second", run_id=busy)
        on_stream = [json.loads(f[b"e"]) for _id, f in r.xrange(f"run:{busy}:events")]
        iters = [e for e in on_stream if e["type"] == "iter"]
        assert tokens_per_s > 0 and tokens_per_s in {e["tokens_per_s"] for e in iters}
        # A CPU has no known peak: mfu is null, and the gauge leaves the run out.
        assert all(e["mfu"] is None for e in iters)
        assert not has(samples, "gptjobs_run_mfu", run_id=busy)

        # The one training worker is busy (prefetch 1), so the next run's message waits in
        # the `train` list: the gauge reports that list's length.
        waiting = stack.submit()["id"]
        samples = wait_for(
            lambda: (s := scrape(stack)) and value(s, "gptjobs_queue_depth", queue="train") >= 1 and s,
            30,
            "the queued message to show",
        )
        assert value(samples, "gptjobs_queue_depth", queue="train") == r.llen("train")
        assert stack.run(waiting)["status"] == "queued"

        # A socket on the queued run stays open (nothing to send yet): counted while open.
        with connect(f"{stack.ws}/runs/{waiting}/stream", open_timeout=10):
            wait_for(
                lambda: value(scrape(stack), "gptjobs_websocket_clients") == ws_before + 1,
                10,
                "the WebSocket gauge to count the open socket",
            )
        wait_for(
            lambda: value(scrape(stack), "gptjobs_websocket_clients") == ws_before,
            10,
            "the WebSocket gauge to come back down",
        )
    finally:
        for run_id in filter(None, (waiting, busy)):
            stack.http.post(f"/runs/{run_id}/cancel")
        stack.wait_status(busy, {"cancelled", "succeeded", "failed"})
    # The worker is free again: it takes the cancelled run's message (and drops it), and the
    # list drains; the ended run's throughput is no longer reported.
    wait_for(
        lambda: (s := scrape(stack)) and value(s, "gptjobs_queue_depth", queue="train") == 0 and s,
        30,
        "the train queue to drain",
    )
    assert not has(scrape(stack), "gptjobs_run_tokens_per_second", run_id=busy)


def test_without_redis_it_still_answers_with_what_it_has(tmp_path: Path) -> None:
    # No Redis: the database part is still reported, Redis is marked down.
    with app_client(tmp_path) as client:
        resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    samples = parse(resp.text)
    assert value(samples, "gptjobs_metrics_source_up", source="redis") == 0
    assert value(samples, "gptjobs_metrics_source_up", source="database") == 1
    assert has(samples, "gptjobs_runs", status="queued") and has(samples, "gptjobs_events_total")
    assert not any(name == "gptjobs_queue_depth" for name, _ in samples)
