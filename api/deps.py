"""What a route needs, as annotated types: `db: DbDep`, `owner: Owner`, ...

The app's lifespan (api/main.py) makes one of each shared object and keeps it on
`app.state`; this is the one module that reads it there. Each dependency takes the
connection (HTTPConnection), so the same ones serve HTTP routes and the WebSocket route.
Also here: the run a caller may see (another owner's run is the same 404 as an unknown id).
"""

from __future__ import annotations

from typing import Annotated, Any

import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, HTTPException, Path, Query
from starlette.requests import HTTPConnection

from api.auth import Caller, Refused, identify
from api.db import Database, Run
from api.limits import RateLimit
from api.metrics import Metrics
from api.relay import Relay
from api.schemas import Problem
from api.settings import Settings


def _state(conn: HTTPConnection) -> Any:
    return conn.app.state


def get_db(conn: HTTPConnection) -> Database:
    return _state(conn).db


def get_settings(conn: HTTPConnection) -> Settings:
    return _state(conn).settings


def get_redis(conn: HTTPConnection) -> aioredis.Redis:
    return _state(conn).redis


def get_celery(conn: HTTPConnection) -> Celery:
    return _state(conn).celery


def get_relay(conn: HTTPConnection) -> Relay:
    return _state(conn).relay


def get_sample_quota(conn: HTTPConnection) -> RateLimit:
    return _state(conn).sample_quota


def get_metrics(conn: HTTPConnection) -> Metrics:
    return _state(conn).metrics


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
RelayDep = Annotated[Relay, Depends(get_relay)]
SampleQuotaDep = Annotated[RateLimit, Depends(get_sample_quota)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def http_caller(conn: HTTPConnection, db: DbDep, settings: SettingsDep) -> Caller:
    """401 (with WWW-Authenticate) or 403 unless the caller may use the server."""
    try:
        return await identify(db, conn.scope, settings.allow_open, conn.headers.get("authorization"), None)
    except Refused as e:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        raise HTTPException(e.status, e.detail, headers=headers) from None


async def socket_caller(
    conn: HTTPConnection,
    db: DbDep,
    settings: SettingsDep,
    token: Annotated[str | None, Query(description="the API key, for browsers (no headers on a WebSocket)")] = None,
) -> Caller | Refused:
    """For the WebSocket, which answers a refusal with a close code after accepting, not
    with an HTTP status: the refusal is returned for the route to close with."""
    try:
        return await identify(db, conn.scope, settings.allow_open, conn.headers.get("authorization"), token)
    except Refused as e:
        return e


async def _owner(caller: Annotated[Caller, Depends(http_caller)]) -> str | None:
    return caller.owner


async def _maybe_caller(conn: HTTPConnection, db: DbDep, settings: SettingsDep) -> Caller | None:
    try:
        return await identify(db, conn.scope, settings.allow_open, conn.headers.get("authorization"), None)
    except Refused:
        return None


CallerDep = Annotated[Caller, Depends(http_caller)]
SocketCallerDep = Annotated[Caller | Refused, Depends(socket_caller)]
Owner = Annotated[str | None, Depends(_owner)]  # the key's name; None in open mode
MaybeCaller = Annotated[Caller | None, Depends(_maybe_caller)]  # for routes that need no key: None without one


# --- runs as their owner sees them ------------------------------------------------------------

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no run with this id"}}
# No control characters: PostgreSQL refuses a NUL in a query parameter (a 500), and no id has one.
RunId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=32,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="the run's id, as POST /runs returned it",
    ),
]


def visible(run: Run | None, owner: str | None) -> bool:
    """Another owner's run does not exist for the caller."""
    return run is not None and (owner is None or run.owner == owner)


def load_run_or_none(db: Database, run_id: str, owner: str | None) -> Run | None:
    with db.session() as s:
        run = s.get(Run, run_id)
    return run if visible(run, owner) else None


def load_run(db: Database, run_id: str, owner: str | None) -> Run:
    """The run, or the 404 an unknown id gets. Blocking: call it in a thread from async code."""
    run = load_run_or_none(db, run_id, owner)
    if run is None:
        raise HTTPException(404, f"run {run_id!r} not found")
    return run
