"""Live events from Redis to many subscribers, and the gap-free follow of one run.

One reader task per run does a blocking XREAD (well under redis-py's 5 s socket timeout)
and fans entries out to that run's subscribers through bounded queues: one XREAD per
socket would need a pooled connection per socket, and the pool caps out. Readers are
reference-counted: the first subscriber starts one, the last one stops it.

`follow()` joins history and live: subscribe first, then read the database after the
client's seq, then the stream's tail the database has not caught up with, then the
queue, dropping any seq already sent. Since seq is contiguous, a jump means something
was missed (a full queue, a Redis restart), and the follower reads history again.

Once a follower has caught up (its queue empty), and its socket offers a synchronous send
(`api.ws`), the reader writes each next event to that socket itself: waking a task per
socket per event cost more CPU than the write. Anything else (a gap, the final event, a
socket that cannot take more now) goes back through the queue to the follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.db import CURRENT, Database, E, Entry, R, dumps, entries
from api.lifecycle import TERMINAL, is_final
from api.redis_keys import stream_key

log = logging.getLogger(__name__)

Item = tuple[int, str, bool]  # (seq, event JSON, is the final status)
SendNowait = Callable[[str], bool]  # sends one message now, or returns False having sent nothing


class Subscription:
    """One subscriber's buffer of live items, and the one waiter its follower parks on;
    or, while the follower is caught up, the socket the reader writes to directly.

    Not an asyncio.Queue, nor wait_for per item: at 200 events/s to 100 sockets the Python
    per delivery is what limits the relay. Quiet is noticed by a timer per subscription that
    fires every idle_s, not a timeout per wait, so a delivery costs no timer."""

    def __init__(self, limit: int, idle_s: float) -> None:
        self.items: deque[Item] = deque()
        self.limit, self.idle_s = limit, idle_s
        self.overflowed = False
        self.waiter: asyncio.Future[bool] | None = None
        self.fresh = False  # something was pushed since the last tick
        self._tick_handle: asyncio.TimerHandle | None = None
        # While set, the follower is caught up at seq `last` and parked; push() sends for it.
        self.send_nowait: SendNowait | None = None
        self.last = 0

    def push(self, item: Item) -> None:
        if self.send_nowait is not None:
            seq = item[0]
            if seq <= self.last:
                return
            if seq == self.last + 1 and not item[2] and self._send_now(item[1]):
                self.last = seq
                self.fresh = True
                return
            self.send_nowait = None  # a gap, the final event or a full socket: the follower's to handle
        if self.overflowed:
            return
        if len(self.items) >= self.limit:
            # A slow client: it will resync from history, not stall others or grow without bound.
            self.overflowed = True
            self.items.clear()
        else:
            self.items.append(item)
        self.fresh = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(True)

    def _send_now(self, body: str) -> bool:
        assert self.send_nowait is not None
        try:
            return self.send_nowait(body)
        except Exception:  # never the reader's problem: the follower's own send will fail and end it
            log.exception("relay: send_nowait failed")
            return False

    async def wait(self) -> bool:
        """Until there is something to take (True), or no item came for idle_s to 2 * idle_s (False)."""
        if self.items or self.overflowed:
            return True
        loop = asyncio.get_running_loop()
        if self._tick_handle is None:
            self._tick_handle = loop.call_later(self.idle_s, self._tick)
        self.waiter = loop.create_future()
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def _tick(self) -> None:
        if not self.fresh and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(False)
        self.fresh = False
        self._tick_handle = asyncio.get_running_loop().call_later(self.idle_s, self._tick)

    def reset(self) -> None:
        self.overflowed = False
        self.items.clear()

    def close(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None


@dataclass(eq=False)
class _Reader:
    key: str
    subs: set[Subscription] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    stopped: bool = False


def _item(fields: dict[bytes, bytes]) -> Item:
    return int(fields[b"s"]), fields[b"e"].decode(), b"f" in fields


class Relay:
    def __init__(self, r: aioredis.Redis, *, block_ms: int = 1000, queue_size: int = 2000, count: int = 500):
        self.r, self.block_ms, self.queue_size, self.count = r, block_ms, queue_size, count
        self.readers: dict[str, _Reader] = {}
        self.tasks: set[asyncio.Task[None]] = set()  # includes stopped readers still finishing a read

    @contextlib.asynccontextmanager
    async def subscribe(self, run_id: str, idle_s: float = 5.0) -> AsyncIterator[Subscription]:
        """Entries added to the run's stream after this returns reach the subscription."""
        reader = self.readers.get(run_id)
        if reader is None:
            reader = self.readers[run_id] = _Reader(stream_key(run_id))
            reader.task = asyncio.create_task(self._read(reader), name=f"relay:{run_id}")
            self.tasks.add(reader.task)
            reader.task.add_done_callback(self.tasks.discard)
        sub = Subscription(self.queue_size, idle_s)
        reader.subs.add(sub)
        try:
            await reader.ready.wait()
            yield sub
        finally:
            sub.close()
            reader.subs.discard(sub)
            if not reader.subs and self.readers.get(run_id) is reader:
                del self.readers[run_id]
                # A flag, not Task.cancel(): redis-py 8.1 can swallow the cancellation of a
                # blocking XREAD (seen here: 10 of 10 cancelled readers kept reading), so the
                # reader checks this after each read, at most block_ms from now.
                reader.stopped = True

    async def close(self) -> None:
        """Stop every reader and wait for it, before the Redis pool they use is closed."""
        for r in self.readers.values():
            r.stopped = True
        self.readers.clear()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.block_ms / 1000 + 1)

    async def _read(self, reader: _Reader) -> None:
        cursor = "0-0"
        try:
            # Resolve "now" to a real id once: `$` as a cursor between reads would skip
            # whatever arrived in between.
            last = entries(await self.r.xrevrange(reader.key, count=1))
            cursor = last[0][0].decode() if last else "0-0"
        except RedisError as e:
            # Followers still get history and poll the database; the stream is read from
            # its start (deduplicated by seq) once Redis answers again.
            log.warning("relay %s: %s", reader.key, e)
        finally:
            reader.ready.set()
        while not reader.stopped:
            try:
                resp = await self.r.xread({reader.key: cursor}, block=self.block_ms, count=self.count)
            except RedisError as e:
                log.warning("relay %s: %s", reader.key, e)
                await asyncio.sleep(1)
                continue
            for _key, batch in cast(list[tuple[bytes, list[Entry]]], resp or []):
                for entry_id, fields in batch:
                    cursor = entry_id.decode()
                    try:
                        item = _item(fields)
                    except (KeyError, ValueError):
                        log.warning("relay %s: skipping malformed entry %s", reader.key, cursor)
                        continue
                    for sub in reader.subs:
                        sub.push(item)


async def publish(r: aioredis.Redis, ev: dict[str, Any], ttl_s: int) -> None:
    """XADD a status event the API wrote itself (a cancel, the reaper), for followers waiting
    on the stream; a final one sets the stream's expiry, as a worker's does. Best effort:
    the event is in the database already, and followers find it there."""
    key = stream_key(ev["run_id"])
    fields: dict[Any, Any] = {"s": ev["seq"], "e": dumps(ev)}
    if is_final(ev):
        fields["f"] = 1  # lets the reader spot the end without parsing JSON
    with contextlib.suppress(RedisError):
        pipe = r.pipeline(transaction=False)
        pipe.xadd(key, fields)
        if is_final(ev):
            pipe.expire(key, ttl_s)
        await pipe.execute()


# --- history ------------------------------------------------------------------------------


def _history_page(db: Database, run_id: str, after: int, limit: int) -> list[Item]:
    with db.session() as s:
        rows = s.execute(
            select(E.seq, E.body, E.type).where(E.run_id == run_id, E.seq > after, CURRENT).order_by(E.seq).limit(limit)
        ).all()
    return [(seq, body, typ == "status" and json.loads(body).get("status") in TERMINAL) for seq, body, typ in rows]


def _run_status(db: Database, run_id: str) -> str | None:
    with db.session() as s:
        return s.execute(select(R.status).where(R.id == run_id)).scalar()


async def _stream_tail(r: aioredis.Redis, run_id: str, after: int, page: int = 500) -> list[Item]:
    """Stream entries with seq > after: the part the database may not have yet."""
    out: list[Item] = []
    hi = "+"
    while True:
        got = entries(await r.xrevrange(stream_key(run_id), max=hi, count=page))
        for _id, fields in got:
            item = _item(fields)
            if item[0] <= after:
                return out[::-1]
            out.append(item)
        if len(got) < page:
            return out[::-1]
        hi = "(" + got[-1][0].decode()


async def follow(
    db: Database,
    r: aioredis.Redis,
    relay: Relay,
    run_id: str,
    after: int,
    *,
    idle_s: float = 5.0,
    send_nowait: SendNowait | None = None,
) -> AsyncGenerator[str, None]:
    """Every event of the run after seq `after`, once each, in order; ends after the final status.

    With `send_nowait`, live events may be sent through it instead of yielded, only while
    the consumer is waiting for the next one: send each yielded event before asking for more."""
    last = after
    done = False

    async def catch_up() -> AsyncIterator[Item]:
        cursor = last
        while True:
            page = await run_in_threadpool(_history_page, db, run_id, cursor, 1000)
            for item in page:
                yield item
            if len(page) < 1000:
                break
            cursor = page[-1][0]
        if page:
            cursor = page[-1][0]
        try:
            tail = await _stream_tail(r, run_id, cursor)
        except RedisError:
            tail = []
        for item in tail:
            yield item

    async with relay.subscribe(run_id, idle_s) as sub:

        async def resync(below: int | None = None) -> AsyncIterator[str]:
            nonlocal last, done
            async for item in catch_up():
                if item[0] > last and (below is None or item[0] < below):
                    last, done = item[0], item[2]
                    yield item[1]
                    if done:
                        return

        async def settle() -> AsyncIterator[str]:
            """History is complete once the run's row says it ended: the worker writes the
            final status event and the row in one transaction."""
            nonlocal done
            status = await run_in_threadpool(_run_status, db, run_id)
            if status is None or status in TERMINAL:
                async for body in resync():
                    yield body
                done = True

        async for body in resync():
            yield body
        if not done:
            async for body in settle():
                yield body
        items = sub.items
        while not done:
            direct = send_nowait is not None and not items and not sub.overflowed
            if direct:  # caught up, and everything yielded is sent: the reader takes over
                sub.last, sub.send_nowait = last, send_nowait
            woke = await sub.wait()
            if direct:
                last, sub.send_nowait = sub.last, None
            if not woke:
                # Quiet: a Redis restart may have cut the live path, or the run ended
                # without a live final event; the database knows.
                async for body in resync():
                    yield body
                if not done:
                    async for body in settle():
                        yield body
                continue
            if sub.overflowed:
                sub.reset()
                async for body in resync():
                    yield body
                continue
            # Drain everything queued per wake-up: under load one wake-up then serves many events.
            while items and not done:
                item = items.popleft()
                if item[0] <= last:
                    continue
                if item[0] > last + 1:
                    async for body in resync(below=item[0]):
                        yield body
                    if done:
                        break
                last, done = item[0], item[2]
                yield item[1]
