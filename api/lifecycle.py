"""Lifecycles: the states of a run and of a dataset, the moves allowed between them, and the
one way to make a move.

    queued ──▶ running ──▶ succeeded
      │   ▲      │ ├──────▶ failed      (an exception, a NaN loss, max_restarts used up...)
      │   │      │ └──────▶ cancelled   (after a checkpoint is written)
      │   └──────┤                      (the worker shut down: back to the queue)
      │          ▼
      │      recovering ──▶ running      (its worker was lost: resumes from the last checkpoint)
      ├─────────────┴─────▶ cancelled   (waiting for a worker)
      └──────────────────▶ failed      (could not be queued)

    and from any of queued, running, recovering ──▶ pruned: its sweep's early stopping ended
    it (a running run writes a checkpoint first, as for a cancel; api/sweeper.py).

A move is a conditional UPDATE: it happens only while the row is in a state the move may
start from (and, where the mover says so, at the attempt it knows). When two writers race
for a run (a claim and a cancel, two API replicas reaping it, a worker ending a run the
reaper just took back), the database picks one and the other changes nothing; `move` says
which one this caller was.

A sweep is `running` until its controller has started and seen the end of every run its
budget allows (`succeeded`, or `failed` when none of them reached a val loss), or its owner
cancels it (`cancelled`).

A dataset is `preparing` from its upload until a prepare worker has made its token arrays
(`ready`) or found why it cannot (`failed`); a preparation whose worker is lost is started
again under attempt+1, as a run's is, without leaving `preparing`.

Every move is in the run's history as a `status` event. A worker writes its own through its
EventSink (worker/sink.py); a move the API makes (a cancel before any worker had the run,
the reaper, a run that could not be queued) writes its event with `status_event`, in the
transaction of the move that made the API the run's only writer. Either way the seq comes
after `seq_floor`: the one reckoning of the highest seq a run may have handed out.

Torch-free: the API, the workers and the tests share it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlmodel import Session, SQLModel

from api.db import D, Dataset, R, Run, Sweep, dumps, event_row, insert_events, last_seq

QUEUED, RUNNING, RECOVERING = "queued", "running", "recovering"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
PRUNED = "pruned"  # ended by its sweep's early stopping
PREPARING, READY = "preparing", "ready"


@dataclass(frozen=True)
class Lifecycle:
    """States and allowed moves of one table's `status` column, keyed by its `id` column."""

    table: type[SQLModel]
    moves: Mapping[str, frozenset[str]]  # from -> the states it may move to
    ended_at: str | None = None  # a column set to the time when a move ends in a terminal state

    @property
    def states(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.moves, *(t for to in self.moves.values() for t in sorted(to))]))

    @property
    def terminal(self) -> frozenset[str]:
        return frozenset(s for s in self.states if not self.moves.get(s))

    def sources(self, to: str) -> frozenset[str]:
        """The states a row may move to `to` from."""
        return frozenset(s for s, tos in self.moves.items() if to in tos)

    def move(
        self,
        s: Session,
        key: str,
        to: str,
        *,
        frm: Iterable[str] | None = None,
        where: Iterable[Any] = (),
        **values: Any,
    ) -> bool:
        """Move row `key` to `to`, if it is in one of `frm` (default: any state `to` may be
        reached from) and matches `where`; set `values` with it. True if this call moved it."""
        origins = self.sources(to) if frm is None else frozenset(frm)
        assert origins and origins <= self.sources(to), f"no move from {sorted(origins)} to {to}"
        if self.ended_at and to in self.terminal:
            values.setdefault(self.ended_at, time.time())
        c = self.table.__table__.c  # type: ignore[attr-defined]
        q = update(self.table).where(c.id == key, c.status.in_(sorted(origins)), *where).values(status=to, **values)
        return s.execute(q).rowcount == 1  # type: ignore[attr-defined]


RUNS = Lifecycle(
    Run,
    {
        QUEUED: frozenset({RUNNING, CANCELLED, FAILED, PRUNED}),
        RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, QUEUED, RECOVERING, PRUNED}),
        RECOVERING: frozenset({RUNNING, CANCELLED, PRUNED}),
    },
    ended_at="finished_at",
)
RUN_STATES = RUNS.states
TERMINAL = RUNS.terminal
WAITING = frozenset({QUEUED, RECOVERING})  # for a worker to claim it
ACTIVE = WAITING | {RUNNING}  # what counts against GPTJOBS_MAX_ACTIVE_RUNS


DATASETS = Lifecycle(Dataset, {PREPARING: frozenset({READY, FAILED})}, ended_at="finished_at")

SWEEPS = Lifecycle(Sweep, {RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED})}, ended_at="finished_at")


def claim_preparation(s: Session, dataset_id: str, attempt: int) -> bool:
    """Attempt `attempt + 1` of a dataset's preparation, for the worker whose message named
    `attempt`: a second delivery of the same message finds the attempt moved on."""
    q = (
        update(Dataset)
        .where(D.id == dataset_id, D.status == PREPARING, D.attempt == attempt)
        .values(attempt=D.attempt + 1, started_at=time.time())
    )
    return s.execute(q).rowcount == 1  # type: ignore[attr-defined]


def is_final(ev: Mapping[str, Any]) -> bool:
    """The event that ends a run's history: a status event in a terminal state."""
    return ev.get("type") == "status" and ev.get("status") in TERMINAL


def claim(s: Session, run_id: str) -> bool:
    """waiting -> running with attempt+1, for the worker that got its message. A second
    delivery of the same message (a duplicate, or the broker's redelivery after its
    visibility timeout) finds the run taken and claims nothing."""
    return RUNS.move(s, run_id, RUNNING, attempt=R.attempt + 1, started_at=time.time(), reason=None)


def seq_floor(s: Session, run_id: str, stream_seq: int = 0) -> int:
    """The highest seq the run may have handed out: what the database holds, what the
    stream holds (`stream_seq`, the caller read it), and what a worker reserved before
    handing seqs out (it may have lost both the stream and its unsaved events). The next
    event's seq is above it, so no seq a client saw is ever given out again."""
    reserved = s.execute(select(R.seq_reserved).where(R.id == run_id)).scalar() or 0
    return max(last_seq(s, run_id), stream_seq, reserved)


def status_event(
    s: Session, run_id: str, attempt: int, status: str, reason: str, stream_seq: int = 0
) -> dict[str, Any]:
    """The status event of a move the API made, in the caller's transaction, after the
    move that made it the run's only writer (no worker holds the run)."""
    ev = {"run_id": run_id, "seq": seq_floor(s, run_id, stream_seq) + 1, "attempt": attempt, "type": "status"}
    ev |= {"ts": time.time(), "status": status, "reason": reason}
    insert_events(s, [event_row(ev, dumps(ev))])
    return ev
