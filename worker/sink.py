"""Where a run's events go: the Redis stream (live) and the database (lasting).

This class assigns the seqs of a worker's events (after api.lifecycle.seq_floor, as the
API's own status events do). Order of writes, per event:
- iter events: XADD at once (live charts), database in batches (by count or age),
  because one transaction per iteration would make a long run crawl;
- every other event: database first (with any pending iter events and, for a status,
  the run's row, in one transaction), then XADD. A client that sees the final status
  on the stream can therefore read the same history from the database right away.
Redis errors are logged and skipped: the database is the record, Redis the fast path.

Every write is fenced by the attempt (worker/lease.py): the XADD runs in a script that
checks the lease, and each database transaction first checks that the run's row is still
`running` at this attempt. A stale attempt gets LeaseLost and writes nothing more.
The first event of a resumed attempt (`status running` with from_iter) marks, in the same
transaction, what lost attempts reported past that point as superseded.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from sqlalchemy import func, select, update

from api.db import CURRENT, Database, E, Event, R, Run, dumps, event_row, insert_events, tail_seq
from api.lifecycle import RECOVERING, RUNNING, RUNS, is_final, seq_floor
from api.redis_keys import cancel_key, lease_key, prune_key, stream_key
from api.settings import Settings
from worker.lease import XADD_SCRIPT, Lease, LeaseLost

log = logging.getLogger(__name__)

SEQ_BLOCK = 1000  # seqs reserved in the database at a time


class EventSink:
    def __init__(self, db: Database, r: redis.Redis, settings: Settings, run_id: str, lease: Lease):
        self.db, self.r, self.settings = db, r, settings
        self.run_id, self.attempt, self.lease = run_id, lease.attempt, lease
        self.key = stream_key(run_id)
        self.xadd_script = r.register_script(XADD_SCRIPT)
        # Continue after whatever any earlier attempt left, in the DB, only on the stream, or
        # handed out and lost with both (a worker killed while Redis lost its data).
        try:
            redis_seq = tail_seq(r.xrevrange(self.key, count=1))
        except redis.RedisError:
            redis_seq = 0
        with db.session() as s:
            self.seq = self.reserved = seq_floor(s, run_id, redis_seq)
        self.pending: list[dict[str, Any]] = []
        self.pending_since = 0.0
        self.cancelled = False
        self.pruned: str | None = None  # the reason, once its sweep's early stopping asked it to stop
        self.next_cancel_check = 0.0
        self.redis_down_logged = 0.0

    # --- writing ---------------------------------------------------------------------
    def emit(self, ev: dict[str, Any]) -> dict[str, Any]:
        if self.seq >= self.reserved:
            self._reserve()
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
        try:
            self._write(status)
        except Exception:
            if status is not None:  # its row (the last one pending) must not outlive this failure:
                self.pending.pop()  # a later `failed` would otherwise land beside it
            raise
        self.pending = []

    def _write(self, status: dict[str, Any] | None) -> None:
        with self.db.transaction() as s:
            self._guard(s)
            if status is not None and status["status"] == RUNNING and self.attempt > 1:
                self._supersede(s, status.get("from_iter"))
            insert_events(s, self.pending)
            if status is not None and status["status"] == RUNNING:  # the claim moved it: say why
                s.execute(update(Run).where(R.id == self.run_id).values(reason=status.get("reason")))
            elif status is not None:
                # The guard holds the row, so this attempt's own move cannot lose a race; it
                # ends the attempt, and gives back the seqs reserved but not used. Recovering
                # (a rank of its group died) uses up one of the run's restarts.
                more = {"restarts": R.restarts + 1} if status["status"] == RECOVERING else {}
                moved = RUNS.move(
                    s,
                    self.run_id,
                    status["status"],
                    frm=[RUNNING],
                    reason=status.get("reason"),
                    seq_reserved=self.seq,
                    **more,
                )
                assert moved, f"run {self.run_id}: the guarded move to {status['status']} did not happen"

    def _reserve(self) -> None:
        """Record, before handing them out, the next SEQ_BLOCK seqs (one transaction per
        block): a seq seen live but never saved is then still never given out again."""
        with self.db.transaction() as s:
            self._guard(s)
            s.execute(update(Run).where(R.id == self.run_id).values(seq_reserved=self.seq + SEQ_BLOCK))
        self.reserved = self.seq + SEQ_BLOCK

    def _guard(self, s: Any) -> None:
        """Inside a write transaction (SQLite: BEGIN IMMEDIATE holds the write lock; elsewhere
        the row lock): is the run still ours? The reaper and a new claim change this row."""
        row = s.execute(select(R.status, R.attempt).where(R.id == self.run_id).with_for_update()).one_or_none()
        if row is None or row.status != RUNNING or row.attempt != self.attempt:
            self.lease.lost = True
            now = "gone" if row is None else f"{row.status} at attempt {row.attempt}"
            raise LeaseLost(f"run {self.run_id} is {now}; attempt {self.attempt} stops")

    def _supersede(self, s: Any, from_iter: int | None) -> None:
        """Earlier attempts' events past the resume point leave the timeline: everything
        after the checkpoint event this attempt resumed from (everything, from scratch).
        Status events stay: that the run was lost and resumed is part of its history."""
        earlier = [E.run_id == self.run_id, E.attempt < self.attempt, E.type != "status"]
        past: Any = E.seq > 0
        if from_iter is not None:
            q = select(func.max(E.seq)).where(*earlier, E.type == "checkpoint", E.iter == from_iter, CURRENT)
            cut = s.execute(q).scalar()
            # Without its event (lost between the file's rename and the event), go by iter:
            # the checkpoint at iter K comes after K's evaluation and before K's step.
            past = (
                E.seq > cut if cut is not None else (E.iter > from_iter) | ((E.iter == from_iter) & (E.type == "iter"))
            )
        s.execute(update(Event).where(*earlier, past).values(superseded=True))

    def fence(self) -> None:
        """Raise LeaseLost unless the run is still ours: before a checkpoint takes its name.
        Also flushes what is pending, so the database is never behind a checkpoint."""
        self.lease.check()
        self._write(None)  # the guard runs even with nothing pending
        self.pending = []

    def _xadd(self, ev: dict[str, Any], body: str) -> None:
        final = is_final(ev)
        args = [self.attempt, self.settings.stream_maxlen, int(final), self.settings.stream_ttl_s, ev["seq"], body]
        try:
            ok = self.xadd_script(keys=[lease_key(self.run_id), self.key], args=args)
        except redis.RedisError as e:
            self._redis_down(e)
            return
        if not ok:
            self.lease.lost = True
            raise LeaseLost(f"attempt {self.attempt} of run {self.run_id} lost its lease")

    def _redis_down(self, e: Exception) -> None:
        now = time.monotonic()
        if now - self.redis_down_logged > 30:
            log.warning("run %s: Redis unavailable (%s); events go to the database only", self.run_id, e)
            self.redis_down_logged = now

    # --- called by the training loop every iteration ----------------------------------
    def should_stop(self) -> bool:
        self.lease.check()  # raises LeaseLost: the engine stops at once, writing nothing
        now = time.monotonic()
        if self.pending and now - self.pending_since >= self.settings.iter_flush_s:
            self.flush()  # slow runs (big log_interval) still reach the database within ~1 s
        if self.cancelled or now < self.next_cancel_check:
            return self.cancelled
        self.next_cancel_check = now + self.settings.cancel_check_s  # ~50 ms steps: don't ask Redis each one
        try:
            cancel, prune = self.r.mget([cancel_key(self.run_id), prune_key(self.run_id)])
            if prune is not None:
                self.pruned = prune.decode(errors="replace") if isinstance(prune, bytes) else str(prune)
            self.cancelled = cancel is not None or prune is not None
        except redis.RedisError as e:
            self._redis_down(e)
        return self.cancelled

    def close(self) -> None:
        self.flush()
