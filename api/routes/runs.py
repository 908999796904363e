"""/runs: create, list, read and cancel training runs. Their events, log and live stream are
in api/routes/events.py."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from typing import Annotated, Any

import redis.asyncio as aioredis
from celery import Celery
from fastapi import APIRouter, Header, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api import lifecycle
from api.datasets import Lookup
from api.db import Database, Dataset, R, Run, tail_seq
from api.deps import NOT_FOUND, CeleryDep, DbDep, Owner, RedisDep, RunId, SettingsDep, load_run, visible
from api.diagnostics import diagnose
from api.lifecycle import ACTIVE, CANCELLED, FAILED, PRUNED, QUEUED, RUN_STATES, RUNS, TERMINAL, WAITING
from api.limits import invalid
from api.progress import glances, progress
from api.queue import TRAIN_TASK, train_queue
from api.redis_keys import cancel_key, prune_key, stream_key
from api.relay import publish
from api.routes.config import check_config
from api.schemas import Problem, RunCreate, RunDetail, RunList, RunListItem, RunPublic
from api.settings import Settings
from api.sweeps import load_sweep
from api.weights import Parent, ParentLookup, link_parent
from gpt.config import TrainConfig

router = APIRouter(prefix="/runs", tags=["runs"])

# --- create ---------------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=RunPublic,
    responses={
        200: {"model": RunPublic, "description": "a repeat of an earlier request with the same Idempotency-Key"},
        409: {"model": Problem, "description": "Idempotency-Key already used with a different body"},
        413: {"model": Problem, "description": "the body is over GPTJOBS_MAX_BODY_BYTES"},
        503: {"model": Problem, "description": "the queue (Redis) is unreachable; the run is marked failed"},
    },
)
def create_run(
    body: RunCreate,
    response: Response,
    db: DbDep,
    settings: SettingsDep,
    celery: CeleryDep,
    owner: Owner,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> RunPublic:
    """Queue a training run. The config is validated now; a bad key is a 422 naming it and why."""
    lookup, parents = Lookup(db, owner), ParentLookup(db, settings, owner)
    cfg, errors = check_config(body.config, settings, lookup, parents)
    if cfg is None:
        raise RequestValidationError(errors)
    digest = hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True, default=str).encode()).hexdigest()
    # Keys are each owner's own: the column holds a hash of (owner, key), unique.
    scoped_key = _scoped(idempotency_key, owner) if idempotency_key else None
    if scoped_key and (earlier := _replay(db, scoped_key, digest)):
        response.status_code = 200
        return earlier
    run = new_run(
        cfg,
        lookup.found,
        owner,
        parent=parents.found,
        name=body.name,
        max_restarts=body.max_restarts,
        idempotency_key=scoped_key,
        request_hash=digest if scoped_key else None,
    )
    try:
        with db.transaction() as s:
            _check_active_runs(s, owner, settings.max_active_runs)  # in the insert's transaction
            s.add(run)
    except IntegrityError:
        if scoped_key and (earlier := _replay(db, scoped_key, digest)):  # lost a race with a twin
            response.status_code = 200
            return earlier
        raise
    if parents.found is not None:  # before any worker can start it
        link_parent(settings, parents.found, run.id)
    if (e := queue_run(db, celery, run)) is not None:
        raise HTTPException(503, f"could not queue the run (is Redis up?): {e}") from None
    return RunPublic.of(run)


def new_run(
    cfg: TrainConfig, dataset: Dataset | None, owner: str | None, parent: Parent | None = None, **fields: Any
) -> Run:
    """The row of a new run of `cfg` (check_config's), not yet added: POST /runs' and a sweep's.
    With a parent, link_parent must follow before the run is queued."""
    run_id = secrets.token_hex(8)
    config = cfg.to_dict()
    config["out_dir"] = f"runs/{run_id}"  # the server chooses: under its data directory
    if dataset is not None:
        config["dataset"] = dataset.id  # by id: a name may later name another dataset
    if parent is not None:
        config["init_from"] = f"run:{parent.run_id}@{parent.iter}"  # latest/best as they were now
    return Run(
        id=run_id,
        config=config,
        dataset_id=dataset.id if dataset else None,
        dataset_sha256=dataset.sha256 if dataset else None,
        parent_run_id=parent.run_id if parent else None,
        parent_iter=parent.iter if parent else None,
        owner=owner,
        created_at=time.time(),
        **fields,
    )


def queue_run(db: Database, celery: Celery, run: Run) -> Exception | None:
    """Send an added run to the training queue. If that fails, the run ends `failed` saying
    why, and the error is returned."""
    try:
        celery.send_task(TRAIN_TASK, args=[run.id], queue=train_queue(run.config))  # to a worker with its devices
    except Exception as e:
        reason = f"could not queue the run: {e}"
        with db.transaction() as s:
            # Its history ends too, so that a follower (`gptjobs watch`, the dashboard) sees the end.
            if RUNS.move(s, run.id, FAILED, frm=[QUEUED], reason=reason):
                lifecycle.status_event(s, run.id, run.attempt, FAILED, reason)
        return e
    return None


def _scoped(key: str, owner: str | None) -> str:
    return hashlib.sha256(f"{owner or ''}\n{key}".encode()).hexdigest()


def _replay(db: Database, scoped_key: str, digest: str) -> RunPublic | None:
    with db.session() as s:
        run = s.execute(select(Run).where(R.idempotency_key == scoped_key)).scalar_one_or_none()
    if run is None:
        return None
    if run.request_hash != digest:
        raise HTTPException(409, "Idempotency-Key was already used with a different request body")
    return RunPublic.of(run)


def _check_active_runs(s: Session, owner: str | None, limit: int) -> None:
    """Inside the transaction that adds the run: on SQLite (BEGIN IMMEDIATE) two requests
    cannot both count below the limit. PostgreSQL's READ COMMITTED leaves that race open."""
    n = active_runs(s, owner)
    if n >= limit:
        who = "open-mode caller" if owner is None else f"owner {owner!r}"
        raise HTTPException(
            429, f"limit reached: {n} runs queued or running for {who}, at most {limit} (GPTJOBS_MAX_ACTIVE_RUNS)"
        )


def active_runs(s: Session, owner: str | None) -> int:
    """The owner's runs that count against GPTJOBS_MAX_ACTIVE_RUNS (a sweep's among them)."""
    mine = R.owner.is_(None) if owner is None else R.owner == owner
    return int(s.execute(select(func.count()).where(mine, R.status.in_(ACTIVE))).scalar_one())


# --- read -----------------------------------------------------------------------------------


def _encode_cursor(run: Run) -> str:
    return base64.urlsafe_b64encode(f"{run.created_at!r}|{run.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, run_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return float(created), run_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid(("query", "cursor"), "not a cursor this server gave out", cursor) from None


@router.get("", response_model=RunList, responses={404: {"model": Problem, "description": "no sweep with that id"}})
def list_runs(
    db: DbDep,
    owner: Owner,
    status: Annotated[str | None, Query(description="comma-separated statuses, e.g. queued,running")] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor from the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    sweep: Annotated[str | None, Query(max_length=32, description="only this sweep's runs")] = None,
) -> RunList:
    """Runs, newest first."""
    q = select(Run).order_by(R.created_at.desc(), R.id.desc()).limit(limit + 1)
    if owner is not None:
        q = q.where(R.owner == owner)
    if sweep is not None:
        load_sweep(db, sweep, owner)  # another owner's sweep is a 404, as its runs are
        q = q.where(R.sweep_id == sweep)
    if status:
        wanted = [x.strip() for x in status.split(",") if x.strip()]
        bad = [x for x in wanted if x not in RUN_STATES]
        if bad or not wanted:
            raise invalid(("query", "status"), f"unknown status {bad}; choose from {', '.join(RUN_STATES)}", status)
        q = q.where(R.status.in_(wanted))
    if cursor:
        created, run_id = _decode_cursor(cursor)
        q = q.where(or_(R.created_at < created, (R.created_at == created) & (R.id < run_id)))
    with db.session() as s:
        runs = list(s.execute(q).scalars())
        more = len(runs) > limit
        runs = runs[:limit]
        seen = glances(s, runs)
    items = [RunListItem(**RunPublic.of(r).model_dump(), progress=seen[r.id]) for r in runs]
    return RunList(runs=items, next_cursor=_encode_cursor(runs[-1]) if more else None)


@router.get("/{run_id}", response_model=RunDetail, responses=NOT_FOUND)
def get_run(run_id: RunId, db: DbDep, owner: Owner) -> RunDetail:
    """The run, with `progress` (where it is) and `diagnostics` (how it is going: loss trend,
    overfitting, time spent evaluating, MFU and why it is low, NaNs, tokens per parameter)."""
    with db.session() as s:
        run = s.get(Run, run_id)
        if run is None or not visible(run, owner):
            raise HTTPException(404, f"run {run_id!r} not found")
        p = progress(s, run)
        return RunDetail(**RunPublic.of(run).model_dump(), progress=p, diagnostics=diagnose(s, run, p))


# --- cancel ---------------------------------------------------------------------------------


def _end_waiting(db: Database, run_id: str, stream_seq: int, to: str, reason: str) -> dict[str, Any] | None:
    """queued or recovering -> `to` plus its status event, in one transaction; None if
    neither (a worker claimed it meanwhile: the move decides that race)."""
    with db.transaction() as s:
        if not RUNS.move(s, run_id, to, frm=WAITING, reason=reason):
            return None
        attempt = s.execute(select(R.attempt).where(R.id == run_id)).scalar_one()
        return lifecycle.status_event(s, run_id, attempt, to, reason, stream_seq)


async def stop_run(
    db: Database, r: aioredis.Redis, settings: Settings, run: Run, to: str = CANCELLED, reason: str | None = None
) -> tuple[Run, bool]:
    """End a run `to` (cancelled, or pruned by its sweep): one waiting for a worker at once,
    with its status event (True); a running one is asked through its flag (cancel_key, or
    prune_key holding the reason) and ends `to` after writing a checkpoint (False). Returns
    the run as it is now. A RedisError means a running run could not be told."""
    reason = reason or "cancelled while waiting for a worker"
    if run.status in WAITING:
        try:
            stream_seq = tail_seq(await r.xrevrange(stream_key(run.id), count=1))
        except RedisError:
            stream_seq = 0
        ev = await run_in_threadpool(_end_waiting, db, run.id, stream_seq, to, reason)
        if ev is not None:
            await publish(r, ev, settings.stream_ttl_s)
            return await run_in_threadpool(load_run, db, run.id, None), True
        run = await run_in_threadpool(load_run, db, run.id, None)  # a worker claimed it meanwhile
    if run.status not in TERMINAL:
        flag = (prune_key(run.id), reason) if to == PRUNED else (cancel_key(run.id), "1")
        await r.set(*flag, ex=7 * 86400)
    return run, False


@router.post(
    "/{run_id}/cancel",
    response_model=RunPublic,
    responses={
        **NOT_FOUND,
        202: {"model": RunPublic, "description": "running: asked to stop; it checkpoints, then ends cancelled"},
        409: {"model": Problem, "description": "the run has already ended"},
        503: {"model": Problem, "description": "Redis is unreachable, so a running run cannot be told"},
    },
)
async def cancel_run(
    run_id: RunId, response: Response, db: DbDep, r: RedisDep, settings: SettingsDep, owner: Owner
) -> RunPublic:
    """Cancel a run. A queued (or recovering) run ends `cancelled` at once (200) without
    reaching a worker; a running one is asked to stop (202) and ends `cancelled` after
    writing a checkpoint."""
    run = await run_in_threadpool(load_run, db, run_id, owner)
    try:
        run, ended = await stop_run(db, r, settings, run)
    except RedisError as e:
        raise HTTPException(503, f"could not reach Redis to cancel the run: {e}") from None
    if ended:
        return RunPublic.of(run)
    if run.status in TERMINAL:
        raise HTTPException(409, f"run already ended: {run.status}")
    response.status_code = 202
    return RunPublic.of(run)
