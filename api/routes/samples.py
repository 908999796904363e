"""/runs/{id}/samples: read what a model writes.

Sampling runs on a worker on the `sample` queue; this module queues the request by name and
relays the answer from the request's Redis list (the messages are listed in api/queue.py).
No status line is sent before the worker has loaded the checkpoint and checked the prompt,
so a missing checkpoint or an unknown character is a 4xx even for a streamed request.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from api.db import Database, Run
from api.deps import NOT_FOUND, CeleryDep, DbDep, Owner, RedisDep, RunId, SampleQuotaDep, SettingsDep, load_run
from api.lifecycle import ACTIVE
from api.limits import invalid
from api.queue import SAMPLE_QUEUE, SAMPLE_TASK
from api.rpc import Answer, WorkerError
from api.schemas import Problem, SampleRequest, SampleResult
from api.settings import Settings
from gpt import checkpoint as ckpt  # its file naming; it imports torch only to read or write one

router = APIRouter(prefix="/runs", tags=["samples"])


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
    except WorkerError as e:
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
        except WorkerError as e:
            raise e.http() from None
        return JSONResponse(result(ends[0]))

    async def plain() -> AsyncIterator[str]:
        yield body.prompt
        try:
            async for p in pieces():
                if p[0]:
                    yield p[0]
        except WorkerError as e:
            yield f"\n[sampling stopped: {e.detail}]\n"
            return
        # Generated as one batch, but a terminal shows one stream: sample 0 live, the rest now.
        yield "".join(f"\n---------------\n{body.prompt}{t}" for t in texts[1:]) + "\n"

    async def events() -> AsyncIterator[str]:
        yield _sse({"checkpoint_iter": start["checkpoint_iter"], "seed": seed, "num_samples": n}, "start")
        try:
            async for p in pieces():
                yield _sse({"samples": [{"text": t} for t in p]})
        except WorkerError as e:
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
