"""A run's history and its live stream: /runs/{id}/events (JSON pages), /runs/{id}/log
(nanoGPT's lines, optionally followed) and the WebSocket /runs/{id}/stream."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Query, WebSocket
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import func, or_, select
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api.auth import KEY_RECHECK_S, Refused
from api.db import CURRENT, EVENT_TYPES, Database, E
from api.deps import (
    NOT_FOUND,
    CallerDep,
    DbDep,
    Owner,
    RedisDep,
    RelayDep,
    RunId,
    SettingsDep,
    SocketCallerDep,
    load_run,
)
from api.limits import invalid
from api.relay import follow
from api.schemas import EventsPage
from api.ws import SEND_NOWAIT
from gpt.logfmt import format_event

router = APIRouter(prefix="/runs", tags=["runs"])
SEQ_MAX = 2**63 - 1  # the largest a database integer holds: a bigger ?after= is a 422, not an overflow


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
    load_run(db, run_id, owner)
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
    db: DbDep,
    r: RedisDep,
    relay: RelayDep,
    settings: SettingsDep,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, le=SEQ_MAX)] = 0,
    follow_: Annotated[bool, Query(alias="follow", description="keep streaming until the run ends")] = False,
) -> StreamingResponse:
    """The run as the lines nanoGPT prints (`iter 10: loss 3.1, time 33.22ms, mfu 11.07%`)."""
    await run_in_threadpool(load_run, db, run_id, caller.owner)
    if not follow_:
        return StreamingResponse(
            iterate_in_threadpool(_log_lines(db, run_id, after)), media_type="text/plain; charset=utf-8"
        )

    async def lines() -> AsyncIterator[str]:
        checked = time.monotonic()
        async for body in follow(db, r, relay, run_id, after, idle_s=settings.idle_check_s):
            if time.monotonic() - checked > KEY_RECHECK_S:  # a revoked key's follow ends here
                if await caller.revoked(db):
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
    db: DbDep,
    r: RedisDep,
    relay: RelayDep,
    settings: SettingsDep,
    caller: SocketCallerDep,
    after: Annotated[int, Query(ge=0, le=SEQ_MAX)] = 0,
) -> None:
    """Every event after seq `after`: history first, then live, ending with the final
    `status` event and a normal close (1000). Reconnect with the last seq seen to miss
    nothing and see nothing twice. An unknown run closes with 4404; a missing, unknown or
    revoked API key (the Authorization header, or `?token=`) with 4401."""
    await websocket.accept()
    if isinstance(caller, Refused):
        await websocket.close(code=caller.ws_code, reason=caller.detail[:120])
        return
    try:
        await run_in_threadpool(load_run, db, run_id, caller.owner)
    except HTTPException:
        await websocket.close(code=4404, reason="run not found")
        return

    # The ASGI send under Starlette's WebSocket.send, which re-checks the connection state
    # on every message: at thousands of messages a second that check is a cost of its own.
    send = websocket._send
    # With api.ws's protocol, the relay writes live events to a caught-up socket itself.
    send_nowait = (websocket.scope.get("extensions") or {}).get(SEND_NOWAIT)

    async def send_all() -> None:
        events = follow(db, r, relay, run_id, after, idle_s=settings.idle_check_s, send_nowait=send_nowait)
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
        while not await caller.revoked(db):
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
