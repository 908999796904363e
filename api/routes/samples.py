"""/runs/{id}/samples: read what a model writes.

Sampling runs on a worker on the `sample` queue; this module queues the request by name and
relays the answer from the request's Redis list (the messages are listed in api/queue.py).
No status line is sent before the worker has loaded the checkpoint and checked the prompt,
so a missing checkpoint or an unknown character is a 4xx even for a streamed request.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from redis.exceptions import RedisError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from api.db import Database, Run
from api.deps import NOT_FOUND, CeleryDep, DbDep, Owner, RedisDep, RunId, SampleQuotaDep, SettingsDep, load_run
from api.lifecycle import ACTIVE
from api.limits import invalid
from api.queue import SAMPLE_QUEUE, SAMPLE_REPLY_TTL_S, SAMPLE_TASK
from api.redis_keys import sample_reply_key, sample_stop_key
from api.schemas import Problem, SampleRequest, SampleResult
from api.settings import Settings
from gpt import checkpoint as ckpt  # its file naming; it imports torch only to read or write one

router = APIRouter(prefix="/runs", tags=["samples"])


class SampleError(Exception):
    """A request that ends without text: an HTTP error before the stream starts, a last
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

    def __init__(self, r: aioredis.Redis, request_id: str, settings: Settings):
        self.r, self.settings = r, settings
        self.key, self.stop_key = sample_reply_key(request_id), sample_stop_key(request_id)
        self.pending: list[dict[str, Any]] = []
        self.accepted = False

    async def get(self) -> dict[str, Any]:
        """The next message; raises SampleError for an error message or silence."""
        while not self.pending:
            wait_s = self.settings.sample_answer_timeout_s if self.accepted else self.settings.sample_pickup_timeout_s
            deadline = time.monotonic() + wait_s
            got = None
            while got is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    await self.stop()
                    if self.accepted:
                        raise SampleError(504, f"the sampling worker went quiet for {wait_s:g} s; try again")
                    raise SampleError(
                        503,
                        f"no sampling worker took the request within {wait_s:g} s: none is running "
                        "(`gptjobs worker --queue sample`), or all are busy",
                    )
                try:  # under redis-py's 5 s socket timeout; a 0 would mean "forever"
                    got = await self.r.blpop([self.key], timeout=max(0.01, min(left, 4.0)))
                except RedisError as e:
                    raise SampleError(503, f"lost Redis while waiting for the answer: {e}") from None
            msgs = json.loads(got[1])
            self.accepted = True
            self.pending = [m for m in msgs if m["t"] != "accepted"]
        msg = self.pending.pop(0)
        if msg["t"] == "error":
            raise SampleError(msg["status"], msg["detail"], msg.get("loc"), msg.get("input"))
        return msg

    async def stop(self) -> None:
        """Tell the worker nobody listens any more (a no-op for one that has finished)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.stop_key, 1, ex=SAMPLE_REPLY_TTL_S)
        pipe.delete(self.key)
        with contextlib.suppress(RedisError):  # then the worker stops when its pushes fail
            await pipe.execute()


def _no_checkpoint(run: Run) -> str:
    if run.status in ACTIVE:
        cfg = run.config
        first = min(cfg.get("eval_interval", 0) or 0, cfg.get("max_iters", 0) or 0)
        return f"run {run.id} has no checkpoint yet: it is {run.status}, and writes its first at iter {first}"
    return f"run {run.id} has no checkpoint: it ended ({run.status}) before writing one"


def _queue(db: Database, settings: Settings, celery: Any, run_id: str, owner: str | None, req: dict[str, Any]) -> str:
    """404 / 409 / 422 from what the database and the files say, then queue the request.
    One trip to the thread pool for all of it: this is on every request's path."""
    run = load_run(db, run_id, owner)
    out_dir = settings.runs_dir() / run_id
    if not (out_dir / ckpt.LATEST).exists():
        raise HTTPException(409, _no_checkpoint(run))
    which = req["checkpoint"]
    if isinstance(which, int) and not ckpt.by_iter(out_dir, which).exists():
        kept = ", ".join(map(str, ckpt.kept(out_dir))) or "none"
        raise invalid(("body", "checkpoint"), f"no checkpoint at iter {which} is kept (kept: {kept})", which)
    request_id = secrets.token_hex(8)
    try:
        # expires: a worker that gets to it after the API gave up (503) drops it unread.
        celery.send_task(
            SAMPLE_TASK, args=[request_id, run_id, req], queue=SAMPLE_QUEUE, expires=settings.sample_pickup_timeout_s
        )
    except Exception as e:
        raise HTTPException(503, f"could not queue the request (is Redis up?): {e}") from None
    return request_id


@router.post(
    "/{run_id}/samples",
    response_model=SampleResult,
    responses={
        **NOT_FOUND,
        200: {
            "content": {"text/plain": {}, "text/event-stream": {}},
            "description": "JSON; with `stream`, text/plain (or server-sent events with Accept: text/event-stream)",
        },
        409: {"model": Problem, "description": "the run has no checkpoint yet"},
        413: {"model": Problem, "description": "the body is over GPTJOBS_MAX_BODY_BYTES"},
        503: {"model": Problem, "description": "no sampling worker took the request in time, or Redis is down"},
        504: {"model": Problem, "description": "a sampling worker took the request, then stopped answering"},
        500: {"model": Problem, "description": "sampling failed on the worker"},
    },
)
async def create_samples(
    run_id: RunId,
    body: SampleRequest,
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    r: RedisDep,
    celery: CeleryDep,
    quota: SampleQuotaDep,
    owner: Owner,
) -> Any:
    """Sample a run's checkpoint (the newest by default, also while the run trains).

    JSON by default; with `"stream": true` the text comes as it is generated: as plain
    text (the prompt, then sample 0 live, then the other samples), or, with
    `Accept: text/event-stream`, as server-sent events: `start`, a message per piece of
    new text (`{"samples": [{"text": ...}]}`), and `end` with the JSON answer."""
    await quota.check(r, owner, settings.sample_requests_per_min)
    for field, limit, env in (
        ("max_new_tokens", settings.sample_max_new_tokens, "SAMPLE_MAX_NEW_TOKENS"),
        ("num_samples", settings.sample_max_num_samples, "SAMPLE_MAX_NUM_SAMPLES"),
    ):
        if (value := getattr(body, field)) > limit:
            raise invalid(("body", field), f"at most {limit} on this server (GPTJOBS_{env})", value)
    if len(body.prompt) > settings.sample_max_prompt_chars:
        msg = f"at most {settings.sample_max_prompt_chars} characters on this server (GPTJOBS_SAMPLE_MAX_PROMPT_CHARS)"
        raise invalid(("body", "prompt"), msg, len(body.prompt))
    seed = body.seed if body.seed is not None else secrets.randbelow(2**32)  # returned, so it can be repeated
    req = body.model_dump(exclude={"stream"}) | {"seed": seed}
    request_id = await run_in_threadpool(_queue, db, settings, celery, run_id, owner, req)
    answer = Answer(r, request_id, settings)
    try:
        start = await answer.get()
    except SampleError as e:
        raise e.http() from None
    sse = "text/event-stream" in request.headers.get("accept", "")
    n = body.num_samples
    texts = [""] * n

    def result(end: dict[str, Any]) -> dict[str, Any]:
        return {
            "samples": [{"text": t} for t in texts],
            "checkpoint_iter": start["checkpoint_iter"],
            "new_tokens": end["new_tokens"],
            "tokens_per_s": end["tokens_per_s"],
            "seed": seed,
        }

    async def pieces() -> AsyncIterator[list[str]]:
        """New text per sample until the end; the end message is kept for result()."""
        while (msg := await answer.get())["t"] != "end":
            for i, p in enumerate(msg["p"]):
                texts[i] += p
            yield msg["p"]
        ends.append(msg)

    ends: list[dict[str, Any]] = []
    if not (body.stream or sse):
        try:
            async for _ in pieces():
                if await request.is_disconnected():  # curl interrupted: free the worker
                    await answer.stop()
                    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        except SampleError as e:
            raise e.http() from None
        return JSONResponse(result(ends[0]))

    async def plain() -> AsyncIterator[str]:
        yield body.prompt
        try:
            async for p in pieces():
                if p[0]:
                    yield p[0]
        except SampleError as e:
            yield f"\n[sampling stopped: {e.detail}]\n"
            return
        # Generated as one batch, but a terminal shows one stream: sample 0 live, the rest now.
        yield "".join(f"\n---------------\n{body.prompt}{t}" for t in texts[1:]) + "\n"

    async def events() -> AsyncIterator[str]:
        yield _sse({"checkpoint_iter": start["checkpoint_iter"], "seed": seed, "num_samples": n}, "start")
        try:
            async for p in pieces():
                yield _sse({"samples": [{"text": t} for t in p]})
        except SampleError as e:
            yield _sse({"status": e.status, "detail": e.detail}, "error")
            return
        yield _sse(result(ends[0]), "end")

    return StreamingResponse(
        events() if sse else plain(),
        media_type="text/event-stream" if sse else "text/plain; charset=utf-8",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a proxy in front must not hold the text back
            "X-Seed": str(seed),
            "X-Checkpoint-Iter": str(start["checkpoint_iter"]),
        },
        # Runs after the last byte, or once the client has gone: the worker stops generating.
        background=BackgroundTask(answer.stop),
    )


def _sse(data: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"
