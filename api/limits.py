"""What the API answers to requests it will not take, instead of a 500: a body over the
size limit (413), a validation error whose input JSON cannot carry back (422), and too many
requests in a minute (429)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """413 for a request body over `max_bytes(scope)` bytes (GPTJOBS_MAX_BODY_BYTES; more for
    the routes that take files). Pure ASGI: streaming responses and the disconnect checks
    after the body go straight through.

    A declared Content-Length over the limit is refused before a byte of the body is read.
    A body without one (chunked) under a small limit is read here, up to the limit, before
    the app runs, so no endpoint ever sees part of an oversize body; under a file route's
    limit it streams through, counted, and the request ends with the 413 once over it.
    """

    BUFFER_UP_TO = 8 << 20  # a chunked body under a limit this small is read whole before the app runs

    def __init__(self, app: ASGIApp, max_bytes: Callable[[Scope], tuple[int, str]]) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.max_bytes(scope)
        declared = _content_length(scope)
        if declared is not None:
            if declared > limit:
                await _too_large(send, limit, setting)
            else:
                await self.app(scope, receive, send)  # the server stops the body at Content-Length
            return
        if limit > self.BUFFER_UP_TO:
            await self._counted(scope, receive, send, limit, setting)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            first = await receive()
            if first["type"] != "http.request":  # the client left: the app sees that
                break
            size += len(first.get("body", b""))
            if size > limit:
                await _too_large(send, limit, setting)
                return
            chunks.append(first.get("body", b""))
            if not first.get("more_body", False):
                first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: http.disconnect, when the client leaves
            replayed = True
            return first

        await self.app(scope, replay, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int, setting: str) -> None:
        size, refused, started = 0, False, False

        async def counting() -> Message:
            nonlocal size, refused
            msg = await receive()
            if msg["type"] == "http.request" and not refused:
                size += len(msg.get("body", b""))
                if size > limit:
                    refused = True
                    if not started:
                        await _too_large(send, limit, setting)
                    return {"type": "http.disconnect"}  # the app stops reading; what it says is dropped
            return msg

        async def sending(msg: Message) -> None:
            nonlocal started
            if refused:
                return
            started = True
            await send(msg)

        await self.app(scope, counting, sending)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, limit: int, setting: str) -> None:
    body = json.dumps({"detail": f"request body over {limit} bytes ({setting})"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the rest of the body is never read: end the connection with it
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # "inf", "nan"
    if isinstance(x, str):
        return x.encode("utf-8", "backslashreplace").decode()  # a lone surrogate is not UTF-8
    if isinstance(x, dict):
        return {_json_safe(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422 shape. Its default handler echoes each bad input, and Python's JSON
    parser reads 1e400 as inf, accepts NaN and lone surrogates ("\\ud800"): things the
    response cannot encode, so the default answer to them is a 500."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


def invalid(loc: tuple[str, ...], msg: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, so clients parse one error format."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


class RateLimit:
    """At most `per_min` requests per owner in each minute of `clock` (a fixed window,
    counted in Redis, so every API replica shares the count). The clock is injectable so
    that a test can stand at a chosen moment of the minute instead of waiting for one."""

    def __init__(
        self, key: Callable[[str | None, int], str], what: str, setting: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.key, self.what, self.setting, self.clock = key, what, setting, clock

    async def check(self, r: aioredis.Redis, owner: str | None, per_min: int) -> None:
        now = self.clock()
        key = self.key(owner, int(now // 60))
        try:
            pipe = r.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, 120)
            n = (await pipe.execute())[0]
        except RedisError:
            return  # not counted: the request needs Redis anyway, and says so (503) if it gets that far
        if n > per_min:
            wait_s = 60 - int(now % 60)
            raise HTTPException(
                429,
                f"limit reached: at most {per_min} {self.what} a minute ({self.setting}); try again in {wait_s} s",
                headers={"Retry-After": str(wait_s)},
            )
