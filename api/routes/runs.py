"""/runs: create, list, read, cancel, and follow training runs."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio
import redis.asyncio as aioredis
from celery import Celery
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api.auth import KEY_RECHECK_S, OPEN_REFUSED, Owner, Unauthorized, open_here, owner_of, presented_key, revoked
from api.db import (
    ACTIVE,
    CURRENT,
    EVENT_TYPES,
    RUN_STATUSES,
    TERMINAL,
    Database,
    E,
    R,
    Run,
    append_status,
    cancel_key,
    stream_key,
    tail_seq,
)
from api.diagnostics import diagnose
from api.progress import glances, progress
from api.queue import TRAIN_QUEUE, TRAIN_TASK
from api.relay import Relay, follow, publish
from api.schemas import EventsPage, Problem, RunCreate, RunDetail, RunList, RunListItem, RunPublic
from api.settings import Settings
from api.ws import SEND_NOWAIT
from gpt.config import ConfigError, TrainConfig, make_config
from gpt.logfmt import format_event

router = APIRouter(prefix="/runs", tags=["runs"])

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
SEQ_MAX = 2**63 - 1  # the largest a database integer holds: a bigger ?after= is a 422, not an overflow


def _state(request: Request) -> Any:
    return request.app.state


def get_db(request: Request) -> Database:
    return _state(request).db


def get_settings_dep(request: Request) -> Settings:
    return _state(request).settings


def get_redis(request: Request) -> aioredis.Redis:
    return _state(request).redis


def get_celery(request: Request) -> Celery:
    return _state(request).celery


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


def invalid(loc: tuple[str, ...], msg: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, so clients parse one error format."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


def _visible(run: Run | None, owner: str | None) -> bool:
    """Another owner's run does not exist for the caller: the same 404 as an unknown id."""
    return run is not None and (owner is None or run.owner == owner)


def _load(db: Database, run_id: str, owner: str | None) -> Run:
    with db.session() as s:
        run = s.get(Run, run_id)
    if run is None or not _visible(run, owner):
        raise HTTPException(404, f"run {run_id!r} not found")
    return run


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
    cfg, errors = check_config(body.config, settings)
    if cfg is None:
        raise RequestValidationError(errors)
    digest = hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True, default=str).encode()).hexdigest()
    # Keys are each owner's own: the column holds a hash of (owner, key), unique.
    scoped_key = _scoped(idempotency_key, owner) if idempotency_key else None
    if scoped_key and (earlier := _replay(db, scoped_key, digest)):
        response.status_code = 200
        return earlier
    run_id = secrets.token_hex(8)
    config = cfg.to_dict()
    config["out_dir"] = f"runs/{run_id}"  # the server chooses: under its data directory
    run = Run(
        id=run_id,
        name=body.name,
        config=config,
        max_restarts=body.max_restarts,
        owner=owner,
        idempotency_key=scoped_key,
        request_hash=digest if scoped_key else None,
        created_at=time.time(),
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
    try:
        celery.send_task(TRAIN_TASK, args=[run_id], queue=TRAIN_QUEUE)
    except Exception as e:
        reason = f"could not queue the run: {e}"
        with db.transaction() as s:
            res = s.execute(
                update(Run)
                .where(R.id == run_id, R.status == "queued")
                .values(status="failed", reason=reason, finished_at=time.time())
            )
            # Its history ends too, so that a follower (`gptjobs watch`, the dashboard) sees the end.
            if res.rowcount == 1:  # type: ignore[attr-defined]
                append_status(s, run_id, run.attempt, 0, "failed", reason)
        raise HTTPException(503, f"could not queue the run (is Redis up?): {e}") from None
    return RunPublic.of(run)


def check_config(config: dict[str, Any], settings: Settings) -> tuple[TrainConfig | None, list[dict[str, Any]]]:
    """The config filled in, or the errors by field (FastAPI's 422 items): every check
    POST /runs makes of a config, for it and for POST /config/validate."""
    try:
        cfg = make_config(config, max_params=settings.max_params, allow_paths=False)
    except ConfigError as e:
        loc = ("body", "config")
        return None, [
            {"type": "value_error", "loc": (*loc, k), "msg": v, "input": config.get(k)} for k, v in e.errors.items()
        ]
    if cfg.max_iters > settings.max_iters:
        msg = f"at most {settings.max_iters} on this server (GPTJOBS_MAX_ITERS)"
        return None, [
            {"type": "value_error", "loc": ("body", "config", "max_iters"), "msg": msg, "input": cfg.max_iters}
        ]
    return cfg, []


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
    mine = R.owner.is_(None) if owner is None else R.owner == owner
    n = s.execute(select(func.count()).where(mine, R.status.in_(ACTIVE))).scalar_one()
    if n >= limit:
        who = "open-mode caller" if owner is None else f"owner {owner!r}"
        raise HTTPException(
            429, f"limit reached: {n} runs queued or running for {who}, at most {limit} (GPTJOBS_MAX_ACTIVE_RUNS)"
        )


# --- read -----------------------------------------------------------------------------------


def _encode_cursor(run: Run) -> str:
    return base64.urlsafe_b64encode(f"{run.created_at!r}|{run.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, run_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return float(created), run_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid(("query", "cursor"), "not a cursor this server gave out", cursor) from None


@router.get("", response_model=RunList)
def list_runs(
    db: DbDep,
    owner: Owner,
    status: Annotated[str | None, Query(description="comma-separated statuses, e.g. queued,running")] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor from the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RunList:
    """Runs, newest first."""
    q = select(Run).order_by(R.created_at.desc(), R.id.desc()).limit(limit + 1)
    if owner is not None:
        q = q.where(R.owner == owner)
    if status:
        wanted = [x.strip() for x in status.split(",") if x.strip()]
        bad = [x for x in wanted if x not in RUN_STATUSES]
        if bad or not wanted:
            raise invalid(("query", "status"), f"unknown status {bad}; choose from {', '.join(RUN_STATUSES)}", status)
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
        if run is None or not _visible(run, owner):
            raise HTTPException(404, f"run {run_id!r} not found")
        p = progress(s, run)
        return RunDetail(**RunPublic.of(run).model_dump(), progress=p, diagnostics=diagnose(s, run, p))


# --- cancel ---------------------------------------------------------------------------------


def _cancel_queued(db: Database, run_id: str, stream_seq: int) -> dict[str, Any] | None:
    """queued or recovering -> cancelled plus its status event, in one transaction; None if
    neither.

    A seq assigned outside the worker (as the reaper's, api/reaper.py): safe, because no
    worker holds the run (the conditional UPDATE decides that race with a claim), and it
    continues after anything an earlier attempt left in the database or on the stream.
    """
    now = time.time()
    reason = "cancelled while waiting for a worker"
    with db.transaction() as s:
        res = s.execute(
            update(Run)
            .where(R.id == run_id, R.status.in_(("queued", "recovering")))
            .values(status="cancelled", reason=reason, finished_at=now)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return None
        attempt = s.execute(select(R.attempt).where(R.id == run_id)).scalar_one()
        return append_status(s, run_id, attempt, stream_seq, "cancelled", reason)


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
    run = await run_in_threadpool(_load, db, run_id, owner)
    if run.status in ("queued", "recovering"):
        try:
            stream_seq = tail_seq(await r.xrevrange(stream_key(run_id), count=1))
        except RedisError:
            stream_seq = 0
        ev = await run_in_threadpool(_cancel_queued, db, run_id, stream_seq)
        if ev is not None:
            await publish(r, ev, settings.stream_ttl_s)
            return RunPublic.of(await run_in_threadpool(_load, db, run_id, owner))
        run = await run_in_threadpool(_load, db, run_id, owner)  # a worker claimed it meanwhile
    if run.status in TERMINAL:
        raise HTTPException(409, f"run already ended: {run.status}")
    try:
        await r.set(cancel_key(run_id), 1, ex=7 * 86400)
    except RedisError as e:
        raise HTTPException(503, f"could not reach Redis to cancel the run: {e}") from None
    response.status_code = 202
    return RunPublic.of(run)


# --- events and log -------------------------------------------------------------------------


def _types(type_: str | None) -> list[str] | None:
    if not type_:
        return None
    wanted = [t.strip() for t in type_.split(",") if t.strip()]
    bad = [t for t in wanted if t not in EVENT_TYPES]
    if bad or not wanted:
        raise invalid(("query", "type"), f"unknown event type {bad}; choose from {', '.join(EVENT_TYPES)}", type_)
    return wanted


def _downsampled(db: Database, run_id: str, after: int, types: list[str] | None, max_points: int) -> tuple[list, int]:
    """Every non-iter event, and at most max_points iter events evenly spread (first and last kept)."""
    base = [E.run_id == run_id, E.seq > after, CURRENT]
    with db.session() as s:
        # Bound every read by the newest seq, read first: events committed meanwhile are for
        # the next call (next_after), not skipped by it.
        newest = s.execute(select(func.max(E.seq)).where(*base)).scalar() or after
        base.append(E.seq <= newest)
        other = [E.type != "iter"] + ([E.type.in_(types)] if types else [])
        rows = list(s.execute(select(E.seq, E.body).where(*base, *other)).all())
        if types is None or "iter" in types:
            n = s.execute(select(func.count()).where(*base, E.type == "iter")).scalar_one()
            stride = max(1, math.ceil((n - 1) / (max_points - 1)))  # first, every stride-th, and the last
            rn = func.row_number().over(order_by=E.seq).label("rn")
            sub = select(E.seq, E.body, rn).where(*base, E.type == "iter").subquery()
            keep = or_((sub.c.rn - 1) % stride == 0, sub.c.rn == n)
            rows += s.execute(select(sub.c.seq, sub.c.body).where(keep)).all()
    rows.sort(key=lambda row: row[0])
    return rows, newest


@router.get("/{run_id}/events", response_model=EventsPage, responses=NOT_FOUND)
def get_events(
    run_id: RunId,
    db: DbDep,
    owner: Owner,
    after: Annotated[int, Query(ge=0, le=SEQ_MAX, description="return events with seq greater than this")] = 0,
    type: Annotated[str | None, Query(description="comma-separated event types, e.g. iter,eval")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    max_points: Annotated[
        int | None,
        Query(ge=2, le=100_000, description="for charts: thin iter events to about this many; keeps all others"),
    ] = None,
) -> Response:
    """The run's history in the event format, cursor-based. With max_points the whole range
    comes in one response (limit does not apply)."""
    types = _types(type)
    _load(db, run_id, owner)
    if max_points is not None:
        rows, next_after = _downsampled(db, run_id, after, types, max_points)
        more = False
    else:
        q = select(E.seq, E.body).where(E.run_id == run_id, E.seq > after, CURRENT)
        if types:
            q = q.where(E.type.in_(types))
        with db.session() as s:
            rows = list(s.execute(q.order_by(E.seq).limit(limit + 1)).all())
        more = len(rows) > limit
        rows = rows[:limit]
        next_after = rows[-1][0] if rows else after
    # The stored JSON is the wire format: splice it in rather than parse and re-encode.
    body = '{"events":[' + ",".join(b for _, b in rows) + f'],"next_after":{next_after},"has_more":{json.dumps(more)}}}'
    return Response(body, media_type="application/json")


def _log_lines(db: Database, run_id: str, after: int) -> Iterator[str]:
    while True:
        with db.session() as s:
            rows = s.execute(
                select(E.seq, E.body).where(E.run_id == run_id, E.seq > after, CURRENT).order_by(E.seq).limit(5000)
            ).all()
        yield "".join(line + "\n" for _, b in rows for line in format_event(json.loads(b)))
        if len(rows) < 5000:
            return
        after = rows[-1][0]


@router.get(
    "/{run_id}/log",
    response_class=StreamingResponse,
    responses={**NOT_FOUND, 200: {"content": {"text/plain": {}}, "description": "nanoGPT-style lines"}},
)
async def get_log(
    run_id: RunId,
    request: Request,
    db: DbDep,
    owner: Owner,
    after: Annotated[int, Query(ge=0, le=SEQ_MAX)] = 0,
    follow_: Annotated[bool, Query(alias="follow", description="keep streaming until the run ends")] = False,
) -> StreamingResponse:
    """The run as the lines nanoGPT prints (`iter 10: loss 3.1, time 33.22ms, mfu 11.07%`)."""
    await run_in_threadpool(_load, db, run_id, owner)
    if not follow_:
        return StreamingResponse(
            iterate_in_threadpool(_log_lines(db, run_id, after)), media_type="text/plain; charset=utf-8"
        )
    st = request.app.state
    key = presented_key(request.headers.get("authorization"))

    async def lines() -> AsyncIterator[str]:
        checked = time.monotonic()
        async for body in follow(db, st.redis, st.relay, run_id, after, idle_s=st.settings.idle_check_s):
            if time.monotonic() - checked > KEY_RECHECK_S:  # a revoked key's follow ends here
                if await revoked(db, key, owner):
                    yield "\n[stopped: API key revoked]\n"
                    return
                checked = time.monotonic()
            yield "".join(line + "\n" for line in format_event(json.loads(body)))

    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8")


# --- live -----------------------------------------------------------------------------------


@router.websocket("/{run_id}/stream")
async def stream(
    websocket: WebSocket,
    run_id: str,
    after: Annotated[int, Query(ge=0, le=SEQ_MAX)] = 0,
    token: Annotated[str | None, Query(description="the API key, for browsers (no headers on a WebSocket)")] = None,
) -> None:
    """Every event after seq `after`: history first, then live, ending with the final
    `status` event and a normal close (1000). Reconnect with the last seq seen to miss
    nothing and see nothing twice. An unknown run closes with 4404; a missing, unknown or
    revoked API key (the Authorization header, or `token`) with 4401."""
    st = websocket.app.state
    db: Database = st.db
    relay: Relay = st.relay
    await websocket.accept()
    try:
        key = presented_key(websocket.headers.get("authorization"), token)
        owner = await run_in_threadpool(owner_of, db, key)
    except Unauthorized as e:
        await websocket.close(code=4401, reason=str(e)[:120])
        return
    if owner is None and not open_here(websocket.scope):
        await websocket.close(code=4403, reason=OPEN_REFUSED[:120])
        return
    try:
        await run_in_threadpool(_load, db, run_id, owner)
    except HTTPException:
        await websocket.close(code=4404, reason="run not found")
        return

    # The ASGI send under Starlette's WebSocket.send, which re-checks the connection state
    # on every message: at thousands of messages a second that check is a cost of its own.
    send = websocket._send
    # With api.ws's protocol, the relay writes live events to a caught-up socket itself.
    send_nowait = (websocket.scope.get("extensions") or {}).get(SEND_NOWAIT)

    async def send_all() -> None:
        events = follow(db, st.redis, relay, run_id, after, idle_s=st.settings.idle_check_s, send_nowait=send_nowait)
        try:
            async with contextlib.aclosing(events):
                async for body in events:
                    await send({"type": "websocket.send", "text": body})
            await websocket.close(code=1000, reason="run ended")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client went away mid-send (uvicorn's ClientDisconnected is an OSError)

    async def until_client_leaves() -> None:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return

    async def until_key_revoked() -> None:
        while not await revoked(db, key, owner):
            await anyio.sleep(KEY_RECHECK_S)
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await websocket.close(code=4401, reason="API key revoked")

    # The receiver beside the sender is how a client that leaves is noticed at once;
    # whichever finishes first cancels the other, so no task outlives the socket.
    async with anyio.create_task_group() as tg:

        async def run_then_cancel(fn: Any) -> None:
            await fn()
            tg.cancel_scope.cancel()

        tg.start_soon(run_then_cancel, send_all)
        tg.start_soon(run_then_cancel, until_client_leaves)
        tg.start_soon(run_then_cancel, until_key_revoked)
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # gone meanwhile (a server stop)
            await websocket.close(code=1000)
