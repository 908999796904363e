"""The reaper, in the API process: a run whose worker is gone goes back to the queue.

Every reaper_interval_s it looks at the runs `running` in the database. One whose lease
(`run:{id}:lease`, worker/lease.py) does not hold its attempt, and that started more than
lease_ttl_s ago (the worker sets the lease just after its claim commits), has lost its
worker: killed, frozen, or cut off from Redis for longer than the lease. The run then goes
`recovering` and back to the queue, and the next worker resumes it from its newest
checkpoint with attempt+1; or, once max_restarts is used up, it ends `failed` saying why.

Safe with several API replicas: the move is a conditional UPDATE on (status, attempt), so
one replica wins it, writes the status event and queues the run; the others change nothing.

Why not leave this to the broker: Celery's Redis transport hands an unacknowledged message
to another worker only after visibility_timeout (an hour by default), and hands it over
again every visibility_timeout even while its first worker is still training. Acks stay
late (worker/app.py) as a net for a message lost between delivery and claim; the lease is
what notices a dead worker in seconds, and the claim makes every extra delivery a no-op.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from celery import Celery
from redis.exceptions import RedisError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.db import Database, Entry, R, dumps, entries, event_row, insert_events, last_seq, tail_seq
from api.lifecycle import FAILED, RECOVERING, RUNNING, RUNS, WAITING, status_event
from api.queue import TRAIN_QUEUE, TRAIN_TASK
from api.redis_keys import UNACKED, lease_key, stream_key
from api.relay import publish
from api.settings import Settings

log = logging.getLogger(__name__)

TAIL = 1000  # stream entries read back from a lost worker (it leaves at most ~200 unsaved)


def _running(db: Database, started_before: float) -> list[Any]:
    with db.session() as s:
        q = select(R.id, R.attempt, R.restarts, R.max_restarts).where(
            R.status == RUNNING, R.started_at < started_before
        )
        return list(s.execute(q).all())


def _waiting(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.execute(select(R.id).where(R.status.in_(WAITING))).scalars())


def _recover(db: Database, settings: Settings, row: Any, tail: list[Entry]) -> dict[str, Any] | None:
    """running -> recovering (or failed), with its status event; None if another replica,
    a late heartbeat's worker or the run's own end got there first. `tail` is the newest part
    of the run's stream: the lost worker's last iter events, XADDed but not yet in the
    database (it writes them in batches), are saved first, so nothing it reported is lost
    (a resume then supersedes those past its checkpoint)."""
    limit = row.max_restarts if row.max_restarts is not None else settings.max_restarts
    lost = f"its worker stopped renewing the lease of attempt {row.attempt} for {settings.lease_ttl_s:g} s"
    values: dict[str, Any] = {}
    if row.restarts >= limit:
        status, reason = FAILED, f"{lost}, and max_restarts ({limit}) is used up"
    else:
        status = RECOVERING
        reason = f"{lost}; queued to resume from its newest checkpoint (restart {row.restarts + 1} of {limit})"
        values["restarts"] = row.restarts + 1
    with db.transaction() as s:
        if not RUNS.move(s, row.id, status, frm=[RUNNING], where=[R.attempt == row.attempt], reason=reason, **values):
            return None
        saved = last_seq(s, row.id)
        unsaved = [json.loads(f[b"e"]) for _, f in reversed(tail) if int(f[b"s"]) > saved]
        insert_events(s, [event_row(ev, dumps(ev)) for ev in unsaved])
        return status_event(s, row.id, row.attempt, status, reason, tail_seq(tail))


class Reaper:
    def __init__(self, db: Database, r: aioredis.Redis, celery: Celery, settings: Settings):
        self.db, self.r, self.celery, self.settings = db, r, celery, settings
        self.suspects: set[str] = set()  # waiting runs whose message was missing at the last scan
        self.next_scan = 0.0

    async def forever(self) -> None:
        while True:
            try:
                await self.once()
            except RedisError as e:  # no leases to read: nothing can be decided until Redis is back
                log.warning("reaper: Redis unavailable (%s)", e)
            except Exception:
                log.exception("reaper: pass failed")
            await asyncio.sleep(self.settings.reaper_interval_s)

    async def once(self) -> list[dict[str, Any]]:
        """One pass; returns the status events it wrote."""
        await self.requeue_orphans()
        db, r, settings = self.db, self.r, self.settings
        rows = await run_in_threadpool(_running, db, time.time() - settings.lease_ttl_s)
        if not rows:
            return []
        held = await r.mget([lease_key(row.id) for row in rows])
        out = []
        for row, value in zip(rows, held, strict=True):
            if value == str(row.attempt).encode():
                continue
            # A worker XADDs each iter event and writes the database every <= 200 of them.
            tail = entries(await r.xrevrange(stream_key(row.id), count=max(TAIL, 2 * settings.iter_flush_count)))
            ev = await run_in_threadpool(_recover, db, settings, row, tail)
            if ev is None:
                continue
            log.warning("run %s: %s", row.id, ev["reason"])
            await publish(r, ev, settings.stream_ttl_s)
            if ev["status"] == RECOVERING:
                await self._send(row.id)  # if this fails, requeue_orphans sends it later
            out.append(ev)
        return out

    async def requeue_orphans(self) -> list[str]:
        """Runs waiting for a worker (queued or recovering) whose message is neither in the
        queue nor in a worker's hands: a send that failed (Redis down just then), or a queue
        lost with a Redis that kept no append-only file. Sent again once missing in two scans
        lease_ttl_s apart, so that a send in flight is not doubled (a double would only be a
        no-op at the claim). Returns the run ids sent."""
        now = time.monotonic()
        if now < self.next_scan:
            return []
        self.next_scan = now + self.settings.lease_ttl_s
        waiting = set(await run_in_threadpool(_waiting, self.db))
        missing = waiting - await self._in_broker() if waiting else set()
        resend = sorted(missing & self.suspects)
        self.suspects = missing - self.suspects
        for run_id in resend:
            log.warning("run %s: waiting for a worker but not in the queue; queuing it again", run_id)
            await self._send(run_id)
        return resend

    async def _in_broker(self) -> set[str]:
        """Run ids of the training messages in the queue or delivered but unacknowledged, in
        kombu's Redis layout: the list `train`, the hash `unacked` of [message, exchange, key]."""
        queued = await self.r.lrange(TRAIN_QUEUE, 0, -1)
        unacked = await self.r.hvals(UNACKED)
        ids = set()
        for raw in [*queued, *unacked]:
            try:
                msg = json.loads(raw)
                msg = msg[0] if isinstance(msg, list) else msg
                if msg["headers"]["task"] == TRAIN_TASK:
                    body = msg["body"]
                    if msg.get("properties", {}).get("body_encoding") == "base64":
                        body = base64.b64decode(body)
                    ids.add(json.loads(body)[0][0])
            except (ValueError, KeyError, IndexError, TypeError):
                continue  # not a message of ours
        return ids

    async def _send(self, run_id: str) -> None:
        try:
            await run_in_threadpool(self.celery.send_task, TRAIN_TASK, args=[run_id], queue=TRAIN_QUEUE)
        except Exception as e:
            log.warning("reaper: could not queue run %s again: %s", run_id, e)
