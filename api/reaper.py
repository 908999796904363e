"""The reaper, in the API process: a run whose worker is gone goes back to the queue.

Every reaper_interval_s it looks at the runs `running` in the database. One whose lease
(`run:{id}:lease`, worker/lease.py) does not hold its attempt, and that started more than
lease_ttl_s ago (the worker sets the lease just after its claim commits), has lost its
worker: killed, frozen, or cut off from Redis for longer than the lease. The run then goes
`recovering` and back to the queue, and the next worker resumes it from its newest
checkpoint with attempt+1; or, once max_restarts is used up, it ends `failed` saying why.

Safe with several API replicas: the move is a conditional UPDATE on (status, attempt), so
one replica wins it, writes the status event and queues the run; the others change nothing.

It also says why a run on several devices waits, when no connected worker (or set of them)
owns enough (api/capacity.py): "waiting for a worker with 4 devices; the largest connected
has 2", in the run's reason, cleared once one that can serve it is connected.

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
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from api import capacity, datasets
from api.db import D, Database, Dataset, Entry, R, Run, dumps, entries, event_row, insert_events, last_seq, tail_seq
from api.lifecycle import DATASETS, FAILED, PREPARING, RECOVERING, RUNNING, RUNS, WAITING, status_event
from api.queue import PREPARE_QUEUE, PREPARE_TASK, TRAIN_TASK, train_queue
from api.redis_keys import TRAIN_WORKERS, UNACKED, dataset_lease_key, lease_key, stream_key
from api.relay import publish
from api.settings import Settings

log = logging.getLogger(__name__)

TAIL = 1000  # stream entries read back from a lost worker (it leaves at most ~200 unsaved)


def _running(db: Database, started_before: float) -> list[Any]:
    with db.session() as s:
        q = select(R.id, R.attempt, R.restarts, R.max_restarts, R.config).where(
            R.status == RUNNING, R.started_at < started_before
        )
        return list(s.execute(q).all())


def _waiting(db: Database) -> dict[tuple[str, str], tuple[list[Any], str]]:
    """What waits for a worker: {(task, id): (the task's other arguments, its queue)}."""
    with db.session() as s:
        runs = s.execute(select(R.id, R.config).where(R.status.in_(WAITING))).all()
        preps = s.execute(select(D.id, D.attempt).where(D.status == PREPARING, D.started_at.is_(None))).all()
    return {(TRAIN_TASK, i): ([], train_queue(c)) for i, c in runs} | {
        (PREPARE_TASK, i): ([a], PREPARE_QUEUE) for i, a in preps
    }


def _say_what_runs_wait_for(db: Database, devices: list[int]) -> list[tuple[str, str | None]]:
    """Waiting runs on several devices: the reason no connected worker can serve them, or
    none once one can (only reasons of this kind are replaced). Returns what changed."""
    changed = []
    with db.transaction() as s:
        rows = s.execute(select(R.id, R.config, R.reason).where(R.status.in_(WAITING))).all()
        for run_id, config, old in rows:
            if int(config.get("nproc_per_node") or 1) * int(config.get("nnodes") or 1) == 1:
                continue
            if old is not None and not old.startswith(capacity.WAITING_FOR):
                continue  # a reason of another kind (a shutdown, a group that did not form) stays
            new = capacity.waiting_reason(config, devices)
            if new != old:
                s.execute(update(Run).where(R.id == run_id, R.status.in_(WAITING)).values(reason=new))
                changed.append((run_id, new))
    return changed


def _preparing(db: Database, started_before: float) -> list[Any]:
    with db.session() as s:
        q = select(D.id, D.attempt, D.restarts).where(D.status == PREPARING, D.started_at < started_before)
        return list(s.execute(q).all())


def _requeue_preparation(db: Database, settings: Settings, row: Any) -> bool:
    """Back to waiting for a worker (restarts+1), or failed; False if another replica, or the
    worker's own end, got there first."""
    mine = [D.id == row.id, D.status == PREPARING, D.attempt == row.attempt, D.started_at.is_not(None)]
    with db.transaction() as s:
        if row.restarts >= settings.max_prepare_restarts:
            reason = f"its prepare worker was lost {row.restarts + 1} times (GPTJOBS_MAX_PREPARE_RESTARTS)"
            DATASETS.move(s, row.id, FAILED, where=[D.attempt == row.attempt, D.started_at.is_not(None)], reason=reason)
            return False
        res = s.execute(update(Dataset).where(*mine).values(started_at=None, restarts=row.restarts + 1))
        return res.rowcount == 1  # type: ignore[attr-defined]


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
        self.suspects: set[tuple[str, str]] = set()  # waiting work whose message was missing at the last scan
        self.next_scan = self.next_expiry = 0.0

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
        await self.say_what_runs_wait_for()
        await self.recover_preparations()
        await self.expire_uploads()
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
                await self._send(TRAIN_TASK, [row.id], train_queue(row.config))  # else requeue_orphans does, later
            out.append(ev)
        return out

    async def recover_preparations(self) -> list[str]:
        """Datasets whose prepare worker is gone (its lease lapsed): prepared again from the
        start by the next attempt, or failed once max_prepare_restarts is used up."""
        db, settings = self.db, self.settings
        rows = await run_in_threadpool(_preparing, db, time.time() - settings.lease_ttl_s)
        if not rows:
            return []
        held = await self.r.mget([dataset_lease_key(row.id) for row in rows])
        sent = []
        for row, value in zip(rows, held, strict=True):
            if value == str(row.attempt).encode():
                continue
            again = await run_in_threadpool(_requeue_preparation, db, settings, row)
            if again:
                log.warning(
                    "dataset %s: its prepare worker was lost (attempt %d); preparing it again", row.id, row.attempt
                )
                await self._send(PREPARE_TASK, [row.id, row.attempt], PREPARE_QUEUE)
                sent.append(row.id)
        return sent

    async def requeue_orphans(self) -> list[str]:
        """Runs waiting for a worker (queued or recovering), and datasets waiting for a
        prepare worker, whose message is neither in the queue nor in a worker's hands: a
        send that failed (Redis down just then), or a queue lost with a Redis that kept no
        append-only file. Sent again once missing in two scans lease_ttl_s apart, so that a
        send in flight is not doubled (a double would only be a no-op at the claim). Returns
        the ids sent."""
        now = time.monotonic()
        if now < self.next_scan:
            return []
        self.next_scan = now + self.settings.lease_ttl_s
        waiting = await run_in_threadpool(_waiting, self.db)
        queues = sorted({queue for _, queue in waiting.values()})
        missing = set(waiting) - await self._in_broker(queues) if waiting else set()
        resend = sorted(missing & self.suspects)
        self.suspects = missing - self.suspects
        for task, ident in resend:
            log.warning("%s %s: waiting for a worker but not in the queue; queuing it again", task, ident)
            args, queue = waiting[task, ident]
            await self._send(task, [ident, *args], queue)
        return [ident for _, ident in resend]

    async def say_what_runs_wait_for(self) -> list[tuple[str, str | None]]:
        """Each waiting run on several devices that no connected worker can serve says so."""
        devices, gone = capacity.live_devices(await self.r.hgetall(TRAIN_WORKERS))
        if gone:
            await self.r.hdel(TRAIN_WORKERS, *gone)
        changed = await run_in_threadpool(_say_what_runs_wait_for, self.db, devices)
        for run_id, reason in changed:
            log.info("run %s: %s", run_id, reason or "a worker that can serve it is connected")
        return changed

    async def _in_broker(self, queues: list[str]) -> set[tuple[str, str]]:
        """(task, first argument) of our messages in the queues or delivered but not yet
        acknowledged, in kombu's Redis layout: a list per queue, the hash `unacked` of
        [message, exchange, routing key]."""
        raws = [raw for queue in queues for raw in await self.r.lrange(queue, 0, -1)]
        raws += await self.r.hvals(UNACKED)
        found = set()
        for raw in raws:
            try:
                msg = json.loads(raw)
                msg = msg[0] if isinstance(msg, list) else msg
                task = msg["headers"]["task"]
                if task in (TRAIN_TASK, PREPARE_TASK):
                    body = msg["body"]
                    if msg.get("properties", {}).get("body_encoding") == "base64":
                        body = base64.b64decode(body)
                    found.add((task, json.loads(body)[0][0]))
            except (ValueError, KeyError, IndexError, TypeError):
                continue  # not a message of ours
        return found

    async def _send(self, task: str, args: list[Any], queue: str) -> None:
        try:
            await run_in_threadpool(self.celery.send_task, task, args=args, queue=queue)
        except Exception as e:
            log.warning("reaper: could not send %s%s again: %s", task, args, e)

    async def expire_uploads(self) -> None:
        """Abandoned uploads (untouched for upload_ttl_s) go, at most once a minute."""
        now = time.monotonic()
        if now >= self.next_expiry:
            self.next_expiry = now + 60
            gone = await run_in_threadpool(datasets.expire_uploads, self.db, self.settings)
            if gone:
                log.info("reaper: removed %d abandoned uploads", len(gone))
