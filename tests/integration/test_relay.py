"""The relay and follow() against a real redis-server and SQLite, in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from api.db import Database, Run
from api.migrate import upgrade
from api.redis_keys import stream_key
from api.relay import Relay, follow
from api.settings import Settings
from tests.harness import redis_server
from worker.lease import Lease
from worker.sink import EventSink


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _setup(tmp_path: Path, redis_url: str, run_id: str, **overrides: object) -> tuple[Settings, Database, EventSink]:
    settings = Settings(data_dir=tmp_path, redis_url=redis_url, **overrides)  # type: ignore[arg-type]
    upgrade(settings.db_url)
    db = Database(settings.db_url)
    with db.transaction() as s:
        s.add(Run(id=run_id, status="running", config={}, attempt=1, created_at=time.time()))
    r = redis.Redis.from_url(redis_url)
    lease = Lease.for_run(r, run_id, 1, settings.lease_ttl_s)
    lease.acquire()
    return settings, db, EventSink(db, r, settings, run_id, lease)


def _iter(i: int) -> dict[str, object]:
    return {"type": "iter", "ts": time.time(), "iter": i, "loss": 1.0}


def test_follow_joins_history_stream_tail_and_live_through_a_tiny_queue(tmp_path: Path, redis_url: str) -> None:
    # iter events reach the database only every 50: the first 120 sit partly in the DB,
    # partly only on the stream; then live events overflow a 4-slot queue many times.
    _, db, sink = _setup(tmp_path, redis_url, "r1", iter_flush_count=50, iter_flush_s=60)
    for i in range(120):
        sink.emit(_iter(i))

    async def main() -> list[int]:
        r = aioredis.Redis.from_url(redis_url)
        relay = Relay(r, block_ms=200, queue_size=4)
        got: list[int] = []

        async def produce() -> None:
            await asyncio.sleep(0.2)
            for i in range(120, 400):
                await asyncio.to_thread(sink.emit, _iter(i))
            await asyncio.to_thread(sink.emit, {"type": "status", "ts": time.time(), "status": "succeeded"})

        producer = asyncio.create_task(produce())
        async for body in follow(db, r, relay, "r1", after=7, idle_s=1):
            got.append(int(body.split('"seq":')[1].split(",")[0]))
        await producer
        assert relay.readers == {}  # the last subscriber gone, the reader stopped
        await r.aclose()
        return got

    assert asyncio.run(main()) == list(range(8, 402))


def test_readers_stop_when_their_last_subscriber_leaves(redis_url: str) -> None:
    async def main() -> list[bool]:
        r = aioredis.Redis.from_url(redis_url)
        relay = Relay(r, block_ms=200)
        tasks = []
        for k in range(5):
            async with relay.subscribe(f"gone{k}") as sub:
                tasks.append(relay.readers[f"gone{k}"].task)
                await r.xadd(stream_key(f"gone{k}"), {"s": 1, "e": "{}"})
                assert await sub.wait()  # leave while the reader is back in a blocking XREAD
        await asyncio.sleep(0.5)
        await r.aclose()
        return [t is not None and t.done() for t in tasks]

    assert asyncio.run(main()) == [True] * 5


def test_follow_ends_from_the_database_when_redis_lost_the_stream(tmp_path: Path, redis_url: str) -> None:
    _, db, sink = _setup(tmp_path, redis_url, "r2")
    for i in range(10):
        sink.emit(_iter(i))
    sink.emit({"type": "status", "ts": time.time(), "status": "failed", "reason": "test"})
    redis.Redis.from_url(redis_url).delete(stream_key("r2"))  # as if Redis restarted empty

    async def main() -> list[str]:
        r = aioredis.Redis.from_url(redis_url)
        out = [b async for b in follow(db, r, Relay(r, block_ms=200), "r2", after=0, idle_s=0.5)]
        await r.aclose()
        return out

    bodies = asyncio.run(main())
    assert len(bodies) == 11 and '"status":"failed"' in bodies[-1]


def test_follow_sends_directly_once_caught_up_and_falls_back_without_gap_or_dup(tmp_path: Path, redis_url: str) -> None:
    # The reader writes live events straight to the socket while the follower is caught up;
    # a socket that refuses one (full) and a consumer that stalls (overflowing a 4-slot
    # queue) hand events back to the follower. Each seq must still arrive exactly once.
    _, db, sink = _setup(tmp_path, redis_url, "r3")
    for i in range(20):
        sink.emit(_iter(i))

    def seq(body: str) -> int:
        return int(body.split('"seq":')[1].split(",")[0])

    async def main() -> tuple[list[int], int, int]:
        r = aioredis.Redis.from_url(redis_url)
        relay = Relay(r, block_ms=200, queue_size=4)
        got: list[int] = []
        calls = direct = 0

        def send_nowait(body: str) -> bool:
            nonlocal calls, direct
            assert '"status"' not in body  # the final event always goes through the follower
            calls += 1
            if calls % 7 == 0:
                return False
            direct += 1
            got.append(seq(body))
            return True

        async def produce() -> None:
            await asyncio.sleep(0.2)
            for i in range(20, 300):
                await asyncio.to_thread(sink.emit, _iter(i))
                await asyncio.sleep(0.002)
            await asyncio.to_thread(sink.emit, {"type": "status", "ts": time.time(), "status": "succeeded"})

        producer = asyncio.create_task(produce())
        yielded = 0
        async for body in follow(db, r, relay, "r3", after=0, idle_s=1, send_nowait=send_nowait):
            got.append(seq(body))
            yielded += 1
            if 30 <= yielded < 33:
                await asyncio.sleep(0.05)  # a slow send: live events pile up meanwhile
        await producer
        assert relay.readers == {}
        await r.aclose()
        return got, direct, yielded

    got, direct, yielded = asyncio.run(main())
    assert got == list(range(1, 302))
    assert direct > 100 and yielded > 50, (direct, yielded)  # both paths carried a good part of the run
