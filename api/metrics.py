"""Prometheus metrics: `GET /metrics`, in the text exposition format.

Two kinds of numbers:

- Counted by this process as it serves: HTTP request latency (a histogram by method, route
  template and status; the template, `/runs/{run_id}`, never the raw path, so run ids do not
  multiply the series) and the WebSocket clients connected now. Both come from one pure
  ASGI middleware, so no endpoint has to remember to count itself.
- Read at scrape time, in bounded work: runs by status (one GROUP BY on the indexed status
  column), events written (below), the Celery queues' depths (LLEN: the Redis transport
  keeps each queue as a list) and, for each running run, its newest `iter` event's tokens/s
  and MFU from the run's Redis stream (XREVRANGE COUNT 10, one pipelined round trip for all).
  The database is read in a thread, Redis asynchronously; each has a timeout, and a source
  that fails or times out is left out of the answer (`gptjobs_metrics_source_up` says
  which) rather than failing the scrape.

Events written, `gptjobs_events_total`, is derived from the database rather than counted
where the API sees events: most events never pass through the API (it relays only the runs
somebody follows), and a count kept in this process would restart at each API restart and
differ between replicas. seq is per run, contiguous from 1 and never reused, so the events a
run has written are its largest seq, one index seek on the events' primary key (run_id, seq);
the counter is their sum over runs: work in the number of runs, not of events, and the same
value from every replica (aggregate with max, not sum). It trails the stream by the
worker's batching of iter events (at most GPTJOBS_ITER_FLUSH_S, 1 s).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.db import Database, E, R, Run, entries
from api.lifecycle import RUN_STATES, RUNNING
from api.queue import SAMPLE_QUEUE, TRAIN_QUEUE
from api.redis_keys import stream_key

log = logging.getLogger(__name__)

QUEUES = (TRAIN_QUEUE, SAMPLE_QUEUE)
MAX_RUNNING = 1000  # runs whose throughput one scrape reports: one per training worker in practice
ITER_LOOKBACK = 10  # stream entries read per running run to find its newest iter event
SOURCE_TIMEOUT_S = 5.0  # per source (database, Redis); Prometheus' default scrape timeout is 10 s
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of an answer no route gave


class Metrics:
    """The metrics one app counts as it serves, in a registry of its own (one per app, so
    that the tests' several apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.http = Histogram(
            "gptjobs_http_request_duration_seconds",
            "HTTP requests, from the request to the end of the response (a streamed one's whole stream), "
            "by method, route template and status code; /metrics itself is not counted",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.websockets = Gauge(
            "gptjobs_websocket_clients",
            "WebSocket connections open now (/runs/{run_id}/stream)",
            registry=self.registry,
        )


def _route(scope: Scope) -> str:
    """The template of the route that answered; `unmatched` for an answer given without
    one: an unknown path (404), or BodyLimit's 413, which answers before routing."""
    return getattr(scope.get("route"), "path_format", None) or UNMATCHED


class MetricsMiddleware:
    """Pure ASGI: times HTTP requests and counts WebSocket connections.

    A WebSocket counts from when its handshake reaches the app until the handler returns
    (the stream handler returns as soon as the client leaves); counting at the edges rather
    than watching each message keeps the per-event send path as it was."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            self.metrics.websockets.inc()
            try:
                await self.app(scope, receive, send)
            finally:
                self.metrics.websockets.dec()
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the server answers if the app raises before it starts a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = _route(scope)
            if route != "/metrics":
                method = scope["method"] if scope["method"] in METHODS else "other"
                self.metrics.http.labels(method, route, str(status)).observe(time.perf_counter() - start)


# --- read at scrape time -------------------------------------------------------------------


@dataclass
class _DbReading:
    by_status: dict[str, int]
    events: int
    running: list[str]


def _read_db(db: Database) -> _DbReading:
    runs = Run.__table__  # type: ignore[attr-defined]
    # Correlated: one seek on the events' primary key per run, not a scan of the events.
    last_seq = select(func.max(E.seq)).where(E.run_id == R.id).correlate(runs).scalar_subquery()
    with db.session() as s:
        by_status = {st: n for st, n in s.execute(select(R.status, func.count()).group_by(R.status))}
        events = s.execute(select(func.coalesce(func.sum(last_seq), 0)).select_from(runs)).scalar_one()
        running = list(s.execute(select(R.id).where(R.status == RUNNING).order_by(R.id).limit(MAX_RUNNING)).scalars())
    return _DbReading(by_status, int(events), running)


@dataclass
class _RedisReading:
    depths: dict[str, int] = field(default_factory=dict)
    throughput: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # run -> (tokens/s, mfu)


def _newest_iter(reply: Any) -> tuple[float | None, float | None] | None:
    for _id, fields in entries(reply):  # newest first
        try:
            ev = json.loads(fields[b"e"])
        except (KeyError, ValueError):
            continue
        if isinstance(ev, dict) and ev.get("type") == "iter":
            return ev.get("tokens_per_s"), ev.get("mfu")
    return None


async def _read_redis(r: Any, running: list[str]) -> _RedisReading:
    pipe = r.pipeline(transaction=False)
    for q in QUEUES:
        pipe.llen(q)
    for run_id in running:
        pipe.xrevrange(stream_key(run_id), count=ITER_LOOKBACK)
    replies = await pipe.execute()
    out = _RedisReading(depths={q: int(n) for q, n in zip(QUEUES, replies[: len(QUEUES)], strict=True)})
    for run_id, reply in zip(running, replies[len(QUEUES) :], strict=True):
        newest = _newest_iter(reply)
        if newest is not None:
            out.throughput[run_id] = newest
    return out


def _families(db: _DbReading | None, rd: _RedisReading | None) -> Iterable[Metric]:
    up = GaugeMetricFamily(
        "gptjobs_metrics_source_up", "1 if this scrape could read the source, else 0", labels=["source"]
    )
    up.add_metric(["database"], int(db is not None))
    up.add_metric(["redis"], int(rd is not None))
    yield up
    if db is not None:
        runs = GaugeMetricFamily("gptjobs_runs", "Runs by status, from the database", labels=["status"])
        for st in (*RUN_STATES, *sorted(set(db.by_status) - set(RUN_STATES))):
            runs.add_metric([st], db.by_status.get(st, 0))
        yield runs
        yield CounterMetricFamily(
            "gptjobs_events", "Events the runs have written (the sum of each run's newest seq)", value=db.events
        )
    if rd is not None:
        depth = GaugeMetricFamily(
            "gptjobs_queue_depth", "Celery messages waiting in the queue (LLEN of its Redis list)", labels=["queue"]
        )
        for q, n in rd.depths.items():
            depth.add_metric([q], n)
        yield depth
        tps = GaugeMetricFamily(
            "gptjobs_run_tokens_per_second", "A running run's newest iter event: tokens/s", labels=["run_id"]
        )
        mfu = GaugeMetricFamily(
            "gptjobs_run_mfu",
            "A running run's newest iter event: model FLOPs utilization, 0 to 1 (absent where the peak is unknown)",
            labels=["run_id"],
        )
        for run_id, (tokens_per_s, ratio) in rd.throughput.items():
            if tokens_per_s is not None:
                tps.add_metric([run_id], tokens_per_s)
            if ratio is not None:
                mfu.add_metric([run_id], ratio)
        yield tps
        yield mfu


@dataclass
class _Exposition:
    """What generate_latest collects from: this app's registry plus one scrape's readings."""

    registry: CollectorRegistry
    readings: list[Metric]

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()
        yield from self.readings


async def scrape(metrics: Metrics, database: Database, r: aioredis.Redis) -> bytes:
    """The exposition text: what this app counted, and what the sources say now."""
    db: _DbReading | None = None
    rd: _RedisReading | None = None
    try:
        db = await asyncio.wait_for(run_in_threadpool(_read_db, database), SOURCE_TIMEOUT_S)
    except Exception as e:
        log.warning("metrics: database: %s: %s", type(e).__name__, e)
    try:
        rd = await asyncio.wait_for(_read_redis(r, db.running if db else []), SOURCE_TIMEOUT_S)
    except Exception as e:
        log.warning("metrics: redis: %s: %s", type(e).__name__, e)
    return generate_latest(_Exposition(metrics.registry, list(_families(db, rd))))


def install(app: FastAPI) -> None:
    """Count this app's requests and WebSockets (GET /metrics serves them: api/routes/metrics.py).
    Call it after the other middleware is added: this one then sits outside them and times
    their answers too."""
    app.state.metrics = Metrics()
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
