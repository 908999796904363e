"""Where a run's events go: the Redis stream (live) and the database (lasting).

This class is the only place a seq is assigned. Order of writes, per event:
- iter events: XADD at once (live charts), database in batches (by count or age),
  because one transaction per iteration would make a long run crawl;
- every other event: database first (with any pending iter events and, for a status,
  the run's row, in one transaction), then XADD. A client that sees the final status
  on the stream can therefore read the same history from the database right away.
Redis errors are logged and skipped: the database is the record, Redis the fast path.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from sqlalchemy import update

from api.db import (
    TERMINAL,
    Database,
    R,
    Run,
    cancel_key,
    dumps,
    entries,
    event_row,
    insert_events,
    last_seq,
    stream_key,
)
from api.settings import Settings

log = logging.getLogger(__name__)


def stream_last_seq(r: redis.Redis, run_id: str) -> int:
    last = entries(r.xrevrange(stream_key(run_id), count=1))
    return int(last[0][1][b"s"]) if last else 0


class EventSink:
    def __init__(self, db: Database, r: redis.Redis, settings: Settings, run_id: str, attempt: int):
        self.db, self.r, self.settings = db, r, settings
        self.run_id, self.attempt = run_id, attempt
        self.key = stream_key(run_id)
        # Continue after whatever any earlier attempt left, in the DB or only on the stream,
        # so that seq never repeats within a run.
        with db.session() as s:
            db_seq = last_seq(s, run_id)
        try:
            redis_seq = stream_last_seq(r, run_id)
        except redis.RedisError:
            redis_seq = 0
        self.seq = max(db_seq, redis_seq)
        self.pending: list[dict[str, Any]] = []
        self.pending_since = 0.0
        self.cancelled = False
        self.next_cancel_check = 0.0
        self.redis_down_logged = 0.0

    # --- writing ---------------------------------------------------------------------
    def emit(self, ev: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        ev = {"run_id": self.run_id, "seq": self.seq, "attempt": self.attempt, **ev}
        body = dumps(ev)
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(event_row(ev, body))
        if ev["type"] == "iter":
            self._xadd(ev, body)
            if len(self.pending) >= self.settings.iter_flush_count:
                self.flush()
        else:
            self.flush(status=ev if ev["type"] == "status" else None)
            self._xadd(ev, body)
        return ev

    def flush(self, status: dict[str, Any] | None = None) -> None:
        if not self.pending and status is None:
            return
        with self.db.transaction() as s:
            insert_events(s, self.pending)
            if status is not None:
                values: dict[str, Any] = {"status": status["status"], "reason": status.get("reason")}
                if status["status"] in TERMINAL:
                    values["finished_at"] = time.time()
                s.execute(update(Run).where(R.id == self.run_id).values(**values))
        self.pending = []

    def _xadd(self, ev: dict[str, Any], body: str) -> None:
        fields: dict[str, Any] = {"s": ev["seq"], "e": body}
        final = ev["type"] == "status" and ev.get("status") in TERMINAL
        if final:
            fields["f"] = 1  # lets the relay spot the end without parsing JSON
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.xadd(self.key, fields, maxlen=self.settings.stream_maxlen, approximate=True)  # type: ignore[arg-type]
            if final:
                pipe.expire(self.key, self.settings.stream_ttl_s)  # the DB keeps the history
            pipe.execute()
        except redis.RedisError as e:
            self._redis_down(e)

    def _redis_down(self, e: Exception) -> None:
        now = time.monotonic()
        if now - self.redis_down_logged > 30:
            log.warning("run %s: Redis unavailable (%s); events go to the database only", self.run_id, e)
            self.redis_down_logged = now

    # --- called by the training loop every iteration ----------------------------------
    def should_stop(self) -> bool:
        now = time.monotonic()
        if self.pending and now - self.pending_since >= self.settings.iter_flush_s:
            self.flush()  # slow runs (big log_interval) still reach the database within ~1 s
        if self.cancelled or now < self.next_cancel_check:
            return self.cancelled
        self.next_cancel_check = now + self.settings.cancel_check_s  # ~50 ms steps: don't ask Redis each one
        try:
            self.cancelled = bool(self.r.exists(cancel_key(self.run_id)))
        except redis.RedisError as e:
            self._redis_down(e)
        return self.cancelled

    def close(self) -> None:
        self.flush()
