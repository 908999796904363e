"""Tables, engines and the event write path shared by the API and the worker.

Torch-free. The schema is changed only by Alembic (migrations/); nothing here calls
create_all. SQLite gets WAL + busy_timeout, and writers BEGIN IMMEDIATE: a deferred
transaction that reads and then writes fails at once with "database is locked" when
another process committed in between, an immediate one waits its turn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import JSON, BigInteger, Column, Index, Text, event, false, func, insert, select
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, create_engine

EVENT_TYPES = ("iter", "eval", "checkpoint", "status", "warning", "sample")


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_created_id", "created_at", "id"),
        # One run per trial: the sweep controller, restarted between asking for a trial and
        # adding its run, adds it again only if it is not there.
        Index("ix_runs_sweep_trial", "sweep_id", "trial", unique=True),
    )

    id: str = Field(primary_key=True, max_length=32)
    name: str | None = Field(default=None, max_length=200)
    status: str = Field(default="queued", max_length=16, index=True)  # api/lifecycle.py: states and moves
    reason: str | None = Field(default=None, sa_type=Text)
    config: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # validated, defaults filled in
    attempt: int = 0  # deliveries that started training; the lease carries it (worker/lease.py)
    max_restarts: int | None = None  # None: the server's GPTJOBS_MAX_RESTARTS
    restarts: int = 0  # times the reaper queued it again after losing its worker
    # Seqs up to here may have been handed out (worker/sink.py reserves them in blocks before
    # use), even if they never reached the database: no later writer starts below it.
    seq_reserved: int = 0
    owner: str | None = Field(default=None, max_length=100, index=True)  # the API key's name; None: open mode
    # Where it started, for a run that continues another's weights (init_from run:<id>).
    parent_run_id: str | None = Field(default=None, max_length=32, index=True)
    parent_iter: int | None = None  # the parent checkpoint's iter_num
    # What it trains on, when that is a user's dataset: its id and the sha256 of its bytes.
    dataset_id: str | None = Field(default=None, max_length=32, index=True)
    dataset_sha256: str | None = Field(default=None, max_length=64)
    # A sweep's run: the sweep, its trial's number there (Optuna's, from 0) and the values it tries.
    sweep_id: str | None = Field(default=None, max_length=32)
    trial: int | None = None
    params: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    idempotency_key: str | None = Field(default=None, max_length=200, unique=True)
    request_hash: str | None = Field(default=None, max_length=64)  # same key, other body -> 409
    created_at: float  # epoch seconds, like the events' ts; floats sort and compare exactly
    started_at: float | None = None
    finished_at: float | None = None


class Sweep(SQLModel, table=True):
    """A search over runs (api/sweeps.py, api/sweeper.py): the base config, the space, the
    budget. Its runs are rows of `runs` with its id; what the search knows (trials, values
    reported, pruning rungs) is Optuna's study `sweep-<id>`, in the same database."""

    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_created_id", "created_at", "id"),)

    id: str = Field(primary_key=True, max_length=32)
    name: str | None = Field(default=None, max_length=200)
    owner: str | None = Field(default=None, max_length=100, index=True)
    status: str = Field(default="running", max_length=16, index=True)  # api/lifecycle.py SWEEPS
    reason: str | None = Field(default=None, sa_type=Text)
    config: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # the base, as sent
    parameters: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # name -> values or range
    method: str = Field(max_length=16)  # grid, random, tpe
    metric: str = Field(max_length=32)
    goal: str = Field(max_length=16)
    max_runs: int
    max_concurrent: int
    early_stop: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    seed: int = Field(sa_type=BigInteger)
    created_at: float
    finished_at: float | None = None


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run_type_seq", "run_id", "type", "seq"),)

    run_id: str = Field(foreign_key="runs.id", primary_key=True, max_length=32)
    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    type: str = Field(max_length=16)
    iter: int | None = None
    attempt: int = 1
    # Reported by an attempt that was lost, for an iteration after the checkpoint the next
    # attempt resumed from: history leaves it out, so that each iteration shows once.
    superseded: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    body: str = Field(sa_column=Column(Text, nullable=False))  # the event's JSON exactly as on the wire


class ApiKey(SQLModel, table=True):
    """A caller's key (api/auth.py). Only the key's SHA-256 is kept: shown once, at creation."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=16)  # public: what `gptjobs keys list|revoke` name
    name: str = Field(max_length=100, index=True)  # the owner: all of one name's keys share its runs
    key_hash: str = Field(max_length=64, unique=True)
    created_at: float
    revoked_at: float | None = None


class Dataset(SQLModel, table=True):
    """A corpus of its owner's, prepared into train/val token arrays (api/routes/datasets.py,
    worker/prepare.py). Datasets with the same bytes and preparing options share one
    prepared directory, `content_key`, whoever owns them."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_created_id", "created_at", "id"),)

    id: str = Field(primary_key=True, max_length=32)
    owner: str | None = Field(default=None, max_length=100, index=True)
    name: str = Field(max_length=200)  # the owner's name for it: unique among the owner's datasets
    status: str = Field(default="preparing", max_length=16, index=True)  # api/lifecycle.py DATASETS
    reason: str | None = Field(default=None, sa_type=Text)
    format: str | None = Field(default=None, max_length=16)  # text, jsonl, nanogpt; None: told by the worker
    tokenizer: str | None = Field(default=None, max_length=16)  # char, gpt2; None: the archive's own
    val_fraction: float
    text_field: str = Field(default="text", max_length=200)
    filename: str | None = Field(default=None, max_length=500)
    bytes: int = Field(sa_type=BigInteger)  # of the upload, as sent (compressed or not)
    sha256: str = Field(max_length=64)  # of the upload
    content_key: str = Field(max_length=64, index=True)  # sha256 of (sha256, format, tokenizer, options)
    upload_id: str | None = Field(default=None, max_length=32)  # the bytes, until prepared
    progress: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    train_tokens: int | None = Field(default=None, sa_type=BigInteger)
    val_tokens: int | None = Field(default=None, sa_type=BigInteger)
    vocab_size: int | None = None
    documents: int | None = None
    preview: str | None = Field(default=None, sa_type=Text)
    attempt: int = 0  # preparations started; the lease carries it, as a run's
    restarts: int = 0
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class Upload(SQLModel, table=True):
    """A resumable upload: declared, then sent in parts (any order, resent parts replace),
    then completed into a dataset. Parts are files under uploads/<id>/."""

    __tablename__ = "uploads"

    id: str = Field(primary_key=True, max_length=32)
    owner: str | None = Field(default=None, max_length=100, index=True)
    filename: str = Field(max_length=500)
    bytes: int = Field(sa_type=BigInteger)  # declared total
    sha256: str | None = Field(default=None, max_length=64)  # declared, checked at complete
    part_bytes: int
    status: str = Field(default="open", max_length=16)  # open, completed
    dataset_id: str | None = Field(default=None, max_length=32)
    created_at: float
    touched_at: float = Field(index=True)  # the last part or call: abandoned uploads expire from it


class UploadPart(SQLModel, table=True):
    __tablename__ = "upload_parts"

    upload_id: str = Field(foreign_key="uploads.id", primary_key=True, max_length=32, ondelete="CASCADE")
    n: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    bytes: int
    sha256: str = Field(max_length=64)


# Typed column access for Core queries: SQLModel types `Run.status` as a str, which
# type checkers reject inside select()/where().
R = Run.__table__.c  # type: ignore[attr-defined]
E = Event.__table__.c  # type: ignore[attr-defined]
K = ApiKey.__table__.c  # type: ignore[attr-defined]
D = Dataset.__table__.c  # type: ignore[attr-defined]
U = Upload.__table__.c  # type: ignore[attr-defined]
UP = UploadPart.__table__.c  # type: ignore[attr-defined]
S = Sweep.__table__.c  # type: ignore[attr-defined]
CURRENT = E.superseded == false()  # the run's one timeline: every history query filters on it


# --- the event wire format ---------------------------------------------------------------


Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry: (id, {b"s": seq, b"e": event JSON[, b"f": 1]})


def entries(resp: Any) -> list[Entry]:
    """redis-py types replies loosely; stream replies (without decode_responses) are these."""
    return cast(list[Entry], resp or [])


def tail_seq(xrevrange_reply: Any) -> int:
    """The seq of the newest entry of a stream (XREVRANGE key + - COUNT 1), 0 if empty."""
    last = entries(xrevrange_reply)
    return int(last[0][1][b"s"]) if last else 0


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None  # NaN is not JSON; a NaN loss reaches clients as null (the warning names it)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def dumps(ev: dict[str, Any]) -> str:
    try:
        return json.dumps(ev, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(ev), separators=(",", ":"))


def event_row(ev: dict[str, Any], body: str) -> dict[str, Any]:
    it = ev.get("iter")
    return {
        "run_id": ev["run_id"],
        "seq": ev["seq"],
        "type": ev["type"],
        "iter": it if isinstance(it, int) else None,
        "attempt": ev.get("attempt", 1),
        "body": body,
    }


def insert_events(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """One executemany for a batch: 10k single-row commits take seconds, one batch ~0.1 s."""
    if rows:
        session.execute(insert(Event), list(rows))


def last_seq(session: Session, run_id: str) -> int:
    return session.execute(select(func.max(E.seq)).where(E.run_id == run_id)).scalar() or 0


# --- engines ----------------------------------------------------------------------------


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")  # wait for the write lock instead of failing
    # Readers never block the writer, nor it them. Persistent in the file, and set by the
    # migrations already (api/migrate.py): switching needs a lock that two first
    # connections at once would fight over ("database is locked", busy timeout or not).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; FULL costs an fsync per commit
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, *, writer: bool = False) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    return sqlite_rules(engine, writer=writer)


def sqlite_rules(engine: Engine, *, writer: bool) -> Engine:
    """Our SQLite connection rules on an engine: make_engine's, and the one Optuna's storage
    makes for itself (api/study.py)."""
    event.listen(engine, "connect", _sqlite_pragmas)
    if writer:

        @event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # pysqlite would BEGIN (deferred) on its own

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Database:
    """A read engine and a write engine on one URL (the same engine outside SQLite)."""

    def __init__(self, url: str):
        self.url = url
        self.read_engine = make_engine(url)
        self.write_engine = make_engine(url, writer=True) if url.startswith("sqlite") else self.read_engine

    def session(self) -> Session:
        return Session(self.read_engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One short write transaction; commits on success, rolls back on error."""
        with Session(self.write_engine, expire_on_commit=False) as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()
