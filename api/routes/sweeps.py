"""/sweeps: create, list, read and cancel searches over runs. The checks are api/sweeps.py's;
the runs are started, followed and pruned by the controller (api/sweeper.py), and listed as
runs too (GET /runs?sweep=<id>)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api import sweeps
from api.datasets import Lookup
from api.db import Database, R, Run, S, Sweep
from api.deps import DbDep, Owner, RedisDep, SettingsDep
from api.lifecycle import ACTIVE, CANCELLED, RUNNING, SWEEPS, TERMINAL
from api.routes.runs import stop_run
from api.schemas import Problem, SweepCreate, SweepDetail, SweepList
from api.weights import ParentLookup

router = APIRouter(prefix="/sweeps", tags=["sweeps"])
log = logging.getLogger(__name__)

SWEEP_NOT_FOUND: dict[int | str, dict[str, object]] = {404: {"model": Problem, "description": "no sweep with this id"}}
SweepId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[^\x00-\x1f\x7f]+$")]


@router.post(
    "",
    status_code=201,
    response_model=SweepDetail,
    responses={413: {"model": Problem, "description": "the body is over GPTJOBS_MAX_BODY_BYTES"}},
)
def create_sweep(body: SweepCreate, db: DbDep, settings: SettingsDep, owner: Owner) -> SweepDetail:
    """Start a sweep: runs of the base config with each trial's parameters over it, chosen by
    `method`, at most `max_concurrent` at a time, `max_runs` in all; with `early_stop`, the
    runs behind at a rung end `pruned`. Every combination of values (and each range's ends)
    is checked now: one that makes an invalid config is a 422 naming the values."""
    sweep, errors = sweeps.plan(body, settings, Lookup(db, owner), owner, ParentLookup(db, settings, owner))
    if sweep is None:
        raise RequestValidationError(errors)
    with db.transaction() as s:
        s.add(sweep)
    return sweeps.detail(db, sweep)


@router.get("", response_model=SweepList)
def list_sweeps(db: DbDep, owner: Owner, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> SweepList:
    """Sweeps, newest first."""
    q = select(Sweep).order_by(S.created_at.desc(), S.id.desc()).limit(limit)
    if owner is not None:
        q = q.where(S.owner == owner)
    with db.session() as s:
        found = list(s.execute(q).scalars())
        runs = sweeps.sweep_runs(s, [w.id for w in found])
    return SweepList(sweeps=[sweeps.public(w, runs[w.id]) for w in found])


@router.get("/{sweep_id}", response_model=SweepDetail, responses=SWEEP_NOT_FOUND)
def get_sweep(sweep_id: SweepId, db: DbDep, owner: Owner) -> SweepDetail:
    """The sweep with every run's parameters, status and best val loss, the best run so far,
    and how many runs are left to start."""
    return sweeps.detail(db, sweeps.load_sweep(db, sweep_id, owner))


@router.post(
    "/{sweep_id}/cancel",
    response_model=SweepDetail,
    responses={**SWEEP_NOT_FOUND, 409: {"model": Problem, "description": "the sweep has already ended"}},
)
async def cancel_sweep(sweep_id: SweepId, db: DbDep, r: RedisDep, settings: SettingsDep, owner: Owner) -> SweepDetail:
    """Cancel a sweep: no run starts any more; its queued runs end `cancelled` at once and its
    running ones are asked to stop (each writes a checkpoint, then ends `cancelled`)."""
    sweep = await run_in_threadpool(sweeps.load_sweep, db, sweep_id, owner)
    if sweep.status in TERMINAL or not await run_in_threadpool(_cancel, db, sweep_id):
        raise HTTPException(409, f"sweep already ended: {sweep.status}")
    try:
        for run in await run_in_threadpool(_active, db, sweep_id):
            await stop_run(db, r, settings, run, CANCELLED, "its sweep was cancelled")
    except RedisError as e:  # the controller stops the rest when Redis is back
        log.warning("sweep %s: could not stop all its runs yet: %s", sweep_id, e)
    return await run_in_threadpool(sweeps.detail, db, await run_in_threadpool(sweeps.load_sweep, db, sweep_id, owner))


def _cancel(db: Database, sweep_id: str) -> bool:
    with db.transaction() as s:
        return SWEEPS.move(s, sweep_id, CANCELLED, frm=[RUNNING], reason="cancelled by its owner")


def _active(db: Database, sweep_id: str) -> list[Run]:
    with db.session() as s:
        return list(s.execute(select(Run).where(R.sweep_id == sweep_id, R.status.in_(ACTIVE))).scalars())
