"""Leases, fencing and the reaper, piece by piece, on a real redis-server and SQLite (no
Celery worker: the fault suite in tests/faults/ runs the whole path with real processes)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from sqlalchemy import select

from api.db import CURRENT, Database, E, Run
from api.lifecycle import status_event
from api.migrate import upgrade
from api.queue import TRAIN_QUEUE, TRAIN_TASK, make_celery
from api.reaper import Reaper
from api.redis_keys import lease_key, stream_key
from api.settings import Settings
from tests.harness import redis_server
from worker.lease import Lease, LeaseLost
from worker.sink import EventSink
from worker.tasks import claim


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Settings, Database, redis.Redis]]:
    with redis_server() as url:
        db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        upgrade(db_url)
        settings = Settings(data_dir=tmp_path, redis_url=url, database_url=db_url, lease_ttl_s=1, iter_flush_count=1)
        db = Database(db_url)
        r = redis.Redis.from_url(url)
        yield settings, db, r
        db.dispose()


def _new_run(db: Database, run_id: str = "r1", **fields: Any) -> None:
    with db.transaction() as s:
        s.add(Run(id=run_id, config={"max_iters": 100}, created_at=time.time(), **fields))


def _lease(settings: Settings, db: Database, r: redis.Redis, run_id: str = "r1") -> Lease:
    run = claim(db, run_id)
    assert run is not None
    lease = Lease.for_run(r, run_id, run.attempt, settings.lease_ttl_s)
    lease.acquire()
    return lease


def _start(settings: Settings, db: Database, r: redis.Redis, run_id: str = "r1") -> EventSink:
    return EventSink(db, r, settings, run_id, _lease(settings, db, r, run_id))


def _iters(sink: EventSink, its: range) -> None:
    for i in its:
        sink.emit({"type": "iter", "ts": time.time(), "iter": i, "loss": 1.0})


def _timeline(db: Database, run_id: str = "r1") -> list[dict[str, Any]]:
    with db.session() as s:
        rows = s.execute(select(E.body).where(E.run_id == run_id, CURRENT).order_by(E.seq)).scalars()
        return [json.loads(b) for b in rows]


def test_a_stale_attempt_writes_nothing(env: tuple[Settings, Database, redis.Redis]) -> None:
    settings, db, r = env
    _new_run(db)
    old = _start(settings, db, r)
    _iters(old, range(3))
    # The run is handed on (as the reaper does), and attempt 2 claims it.
    with db.transaction() as s:
        s.get(Run, "r1").status = "recovering"  # type: ignore[union-attr]
    new = _start(settings, db, r)
    assert new.attempt == 2 and r.get(lease_key("r1")) == b"2"
    with pytest.raises(LeaseLost):  # the stream refuses it (the lease holds 2)...
        _iters(old, range(3, 4))
    old.pending = [{"run_id": "r1", "seq": 99, "type": "iter", "iter": 3, "attempt": 1, "body": "{}"}]
    with pytest.raises(LeaseLost):  # ...and so does the database
        old.flush()
    with pytest.raises(LeaseLost):  # and a checkpoint would not be renamed into place
        old.fence()
    with pytest.raises(LeaseLost):
        old.should_stop()
    stream = [json.loads(f[b"e"]) for _, f in r.xrange(stream_key("r1"))]
    assert [e["iter"] for e in stream] == [0, 1, 2]
    assert {e["attempt"] for e in _timeline(db)} == {1}


def test_a_frozen_worker_finds_its_lease_gone(env: tuple[Settings, Database, redis.Redis]) -> None:
    settings, db, r = env
    _new_run(db)
    sink = _start(settings, db, r)
    sink.lease.close(release=False)  # no heartbeat, as if the process were stopped
    assert sink.should_stop() is False
    time.sleep(1.3)  # past the 1 s TTL: the key expired
    with pytest.raises(LeaseLost):
        sink.should_stop()  # renews first, since the last renewal is old, and learns it is gone


def test_resume_supersedes_what_the_lost_attempt_reported_past_its_checkpoint(
    env: tuple[Settings, Database, redis.Redis],
) -> None:
    settings, db, r = env
    _new_run(db)
    first = _start(settings, db, r)
    first.emit({"type": "status", "ts": time.time(), "status": "running", "iter": 0})
    _iters(first, range(0, 5))
    first.emit({"type": "checkpoint", "ts": time.time(), "iter": 5})
    _iters(first, range(5, 8))
    first.lease.close(release=False)
    with db.transaction() as s:
        s.get(Run, "r1").status = "recovering"  # type: ignore[union-attr]
    second = _start(settings, db, r)
    assert second.seq == first.reserved > first.seq  # after all the first one might have handed out
    second.emit({"type": "status", "ts": time.time(), "status": "running", "iter": 5, "from_iter": 5})
    _iters(second, range(5, 8))
    timeline = _timeline(db)
    assert [e["iter"] for e in timeline if e["type"] == "iter"] == list(range(8))
    assert [e["attempt"] for e in timeline if e["type"] == "iter"] == [1] * 5 + [2] * 3
    seqs = [e["seq"] for e in timeline]
    assert seqs == sorted(set(seqs))
    assert [e["type"] for e in timeline if e["attempt"] == 1].count("checkpoint") == 1


def _reap(settings: Settings, db: Database, replicas: int = 1) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        r = aioredis.Redis.from_url(settings.redis_url)
        try:
            reapers = [Reaper(db, r, make_celery(settings), settings) for _ in range(replicas)]
            results = await asyncio.gather(*(x.once() for x in reapers))
            return [ev for evs in results for ev in evs]
        finally:
            await r.aclose()

    return asyncio.run(go())


def test_the_reaper_requeues_a_run_whose_lease_expired(env: tuple[Settings, Database, redis.Redis]) -> None:
    settings, db, r = env
    _new_run(db, "held")
    _new_run(db, "lost")
    _new_run(db, "spent", max_restarts=0)
    for run_id in ("held", "lost", "spent"):
        _start(settings, db, r, run_id).lease.close(release=False)
    # What a worker killed between two database batches leaves: iter events on the stream only.
    for i in range(3):
        ev = {"run_id": "spent", "seq": i + 1, "attempt": 1, "type": "iter", "ts": time.time(), "iter": i, "loss": 2.0}
        r.xadd(stream_key("spent"), {"s": ev["seq"], "e": json.dumps(ev)})
    assert _reap(settings, db) == []  # started under a TTL ago: the lease may still be on its way
    time.sleep(1.2)
    r.set(lease_key("held"), b"1", px=5000)  # its worker is alive
    events = _reap(settings, db, replicas=3)  # several API replicas: each run is handled once
    assert sorted((e["run_id"], e["status"]) for e in events) == [("lost", "recovering"), ("spent", "failed")]
    with db.session() as s:
        runs = {run.id: run for run in s.execute(select(Run)).scalars()}
    assert runs["held"].status == "running"
    assert runs["lost"].status == "recovering" and runs["lost"].restarts == 1
    assert runs["spent"].status == "failed" and "max_restarts (0)" in (runs["spent"].reason or "")
    assert [(e["seq"], e["type"]) for e in _timeline(db, "spent")] == [
        (1, "iter"),
        (2, "iter"),
        (3, "iter"),
        (4, "status"),
    ]
    assert r.ttl(stream_key("spent")) > 0  # a finished run's stream expires (the database keeps it)
    # The lost run is queued again (one message), and its status event is on the stream.
    messages = [json.loads(m) for m in r.lrange(TRAIN_QUEUE, 0, -1)]
    assert [m["headers"]["argsrepr"] for m in messages] == ["['lost']"]
    last = json.loads(r.xrevrange(stream_key("lost"), count=1)[0][1][b"e"])
    assert last["status"] == "recovering" and last["seq"] == _timeline(db, "lost")[-1]["seq"]


def test_a_waiting_run_whose_message_was_lost_is_queued_again(env: tuple[Settings, Database, redis.Redis]) -> None:
    settings, db, r = env
    _new_run(db, "orphan")  # queued, but its message never reached the queue (Redis was down)
    _new_run(db, "waiting")  # queued, its message in the queue
    _new_run(db, "taken", status="recovering")  # its message delivered to a worker, not yet acked
    celery = make_celery(settings)
    celery.send_task(TRAIN_TASK, args=["taken"], queue=TRAIN_QUEUE)
    taken = r.rpop(TRAIN_QUEUE)  # as kombu keeps a delivered message until its ack
    r.hset("unacked", "tag-1", json.dumps([json.loads(taken), "", TRAIN_QUEUE]))  # type: ignore[arg-type]
    celery.send_task(TRAIN_TASK, args=["waiting"], queue=TRAIN_QUEUE)

    async def scans() -> list[list[str]]:
        ar = aioredis.Redis.from_url(settings.redis_url)
        try:
            reaper = Reaper(db, ar, make_celery(settings), settings)
            first = await reaper.requeue_orphans()  # missing once: maybe a send in flight
            await asyncio.sleep(settings.lease_ttl_s + 0.1)
            return [first, await reaper.requeue_orphans()]
        finally:
            await ar.aclose()

    assert asyncio.run(scans()) == [[], ["orphan"]]
    queued = [json.loads(m)["headers"]["argsrepr"] for m in r.lrange(TRAIN_QUEUE, 0, -1)]
    assert sorted(queued) == ["['orphan']", "['waiting']"]


def test_a_late_acquire_does_not_evict_a_newer_attempt(env: tuple[Settings, Database, redis.Redis]) -> None:
    settings, _, r = env
    newer = Lease.for_run(r, "r1", 2, settings.lease_ttl_s)
    newer.acquire()
    stale = Lease.for_run(r, "r1", 1, settings.lease_ttl_s)  # frozen between its claim and this
    stale.acquire()
    assert stale.lost and not newer.lost and r.get(lease_key("r1")) == b"2"
    newer.close(release=True)
    stale.close(release=True)
    assert r.get(lease_key("r1")) is None


def test_a_final_status_that_failed_to_write_is_not_written_later(
    env: tuple[Settings, Database, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, db, r = env
    _new_run(db)
    sink = _start(settings, db, r)
    sink.emit({"type": "status", "ts": time.time(), "status": "running", "iter": 0})
    write = sink._write

    def locked_once(status: dict[str, Any] | None) -> None:
        monkeypatch.setattr(sink, "_write", write)
        raise RuntimeError("database is locked")

    monkeypatch.setattr(sink, "_write", locked_once)
    with pytest.raises(RuntimeError):
        sink.emit({"type": "status", "ts": time.time(), "status": "succeeded", "iter": 10})
    sink.emit({"type": "status", "ts": time.time(), "status": "failed", "reason": "could not record the end"})
    assert [e["status"] for e in _timeline(db)] == ["running", "failed"]


def test_a_seq_seen_live_is_never_given_out_again_even_if_redis_loses_it(
    env: tuple[Settings, Database, redis.Redis],
) -> None:
    settings, db, r = env
    _new_run(db)
    sink = EventSink(db, r, settings.model_copy(update={"iter_flush_count": 1000}), "r1", _lease(settings, db, r))
    sink.emit({"type": "status", "ts": time.time(), "status": "running", "iter": 0})
    _iters(sink, range(3))  # seqs 2-4: on the stream (and so on clients' screens), not in the database
    r.flushall()  # Redis restarted without its data; the worker is lost with its unsaved batch
    with db.transaction() as s:
        s.get(Run, "r1").status = "recovering"  # type: ignore[union-attr]
        ev = status_event(s, "r1", 1, "recovering", "worker lost")
    assert ev["seq"] > 4
