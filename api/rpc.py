"""Asking a worker on the `sample` queue and hearing its answer: sampling, and the weights'
import and export. The request carries an id; the worker pushes its messages, in order, to
the request's own Redis list (the messages are listed in api/queue.py), which the API reads
with blocking pops, giving up after the pickup deadline (no worker took it: 503) or the
answer deadline (a worker took it and went quiet: 504), and telling the worker so.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import redis.asyncio as aioredis
from fastapi import HTTPException
from redis.exceptions import RedisError

from api.limits import invalid
from api.queue import SAMPLE_REPLY_TTL_S
from api.redis_keys import sample_reply_key, sample_stop_key
from api.settings import Settings


class WorkerError(Exception):
    """A request that ends without its answer: an HTTP error before a stream starts, a last
    line or event after."""

    def __init__(self, status: int, detail: str, loc: list[str] | None = None, value: Any = None):
        super().__init__(detail)
        self.status, self.detail, self.loc, self.value = status, detail, loc, value

    def http(self) -> Exception:
        if self.status == 422 and self.loc:
            return invalid(tuple(self.loc), self.detail, self.value)
        return HTTPException(self.status, self.detail)


class Answer:
    """The worker's messages for one request, from its Redis list, with the deadlines:
    a worker must take the request within the pickup timeout (else 503), then say something
    at least every answer timeout (else 504)."""

    def __init__(self, r: aioredis.Redis, request_id: str, settings: Settings, answer_timeout_s: float | None = None):
        self.r, self.settings = r, settings
        self.key, self.stop_key = sample_reply_key(request_id), sample_stop_key(request_id)
        self.pending: list[dict[str, Any]] = []
        self.accepted = False
        self.answer_timeout_s = answer_timeout_s or settings.sample_answer_timeout_s

    async def get(self) -> dict[str, Any]:
        """The next message; raises WorkerError for an error message or silence."""
        while not self.pending:
            wait_s = self.answer_timeout_s if self.accepted else self.settings.sample_pickup_timeout_s
            deadline = time.monotonic() + wait_s
            got = None
            while got is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    await self.stop()
                    if self.accepted:
                        raise WorkerError(504, f"the worker went quiet for {wait_s:g} s; try again")
                    raise WorkerError(
                        503,
                        f"no sampling worker took the request within {wait_s:g} s: none is running "
                        "(`gptjobs worker --queue sample`), or all are busy",
                    )
                try:  # under redis-py's 5 s socket timeout; a 0 would mean "forever"
                    got = await self.r.blpop([self.key], timeout=max(0.01, min(left, 4.0)))
                except RedisError as e:
                    raise WorkerError(503, f"lost Redis while waiting for the answer: {e}") from None
            msgs = json.loads(got[1])
            self.accepted = True
            self.pending = [m for m in msgs if m["t"] != "accepted"]
        msg = self.pending.pop(0)
        if msg["t"] == "error":
            raise WorkerError(msg["status"], msg["detail"], msg.get("loc"), msg.get("input"))
        return msg

    async def stop(self) -> None:
        """Tell the worker nobody listens any more (a no-op for one that has finished)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.stop_key, 1, ex=SAMPLE_REPLY_TTL_S)
        pipe.delete(self.key)
        with contextlib.suppress(RedisError):  # then the worker stops when its pushes fail
            await pipe.execute()
