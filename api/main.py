"""The FastAPI app: `uvicorn api.main:app` (or `gptjobs serve`). Never imports torch.

The lifespan makes the process's shared objects (database engines, the Redis pool, the
relay of live events, the Celery client, the reaper) and keeps them on `app.state`, where
api/deps.py hands them to the routes; every route is in api/routes/.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.types import Scope

from api.auth import redact_server_logs
from api.db import Database
from api.limits import BodyLimit, RateLimit, validation_error
from api.metrics import install as install_metrics
from api.queue import make_celery
from api.reaper import Reaper
from api.redis_keys import sample_quota_key
from api.relay import Relay
from api.routes import (
    checkpoints,
    config,
    dashboard,
    datasets,
    events,
    health,
    metrics,
    runs,
    samples,
    uploads,
    weights,
)
from api.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, clock: Callable[[], float] = time.time) -> FastAPI:
    """The app; `clock` is the wall clock the per-minute limits count by (a test's to set)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or get_settings()
        redact_server_logs()  # a browser's WebSocket carries its API key in the URL
        app.state.settings = s
        app.state.db = Database(s.db_url)
        # One pool for the process; each followed run holds one connection in XREAD, so
        # lift redis-py's default cap of 100 well above the number of runs watched at once.
        app.state.redis = aioredis.Redis.from_url(s.redis_url, max_connections=1000)
        app.state.relay = Relay(app.state.redis, block_ms=s.xread_block_ms, queue_size=s.ws_queue_size)
        app.state.celery = make_celery(s)
        app.state.sample_quota = RateLimit(
            sample_quota_key, "sample requests", "GPTJOBS_SAMPLE_REQUESTS_PER_MIN", clock=clock
        )
        reaper = asyncio.create_task(Reaper(app.state.db, app.state.redis, app.state.celery, s).forever())
        try:
            yield
        finally:
            reaper.cancel()
            await app.state.relay.close()
            await app.state.redis.aclose()
            app.state.db.dispose()

    app = FastAPI(
        title="gptjobs",
        summary="Train nanoGPT-style models remotely: submit runs, follow their metrics live.",
        version="0.1.0",
        lifespan=lifespan,
    )
    for module in (weights, runs, events, samples, checkpoints, datasets, uploads, config, health, metrics, dashboard):
        app.include_router(module.router)
    app.mount(dashboard.STATIC_PATH, dashboard.static_files(), name="static")
    # Bad input is a 4xx naming the field: bodies over GPTJOBS_MAX_BODY_BYTES, and inputs like 1e400.
    app.add_middleware(BodyLimit, max_bytes=lambda scope: body_limit(app.state.settings, scope))
    app.add_exception_handler(RequestValidationError, validation_error)
    install_metrics(app)  # last, so that its middleware also times BodyLimit's answers
    return app


def body_limit(s: Settings, scope: Scope) -> tuple[int, str]:
    """The largest body a request may send, and the setting that says so: files go to the
    dataset routes (streamed to disk there), everything else is small JSON."""
    method, path = scope.get("method"), scope.get("path", "")
    if method == "PUT" and PART_PATH.fullmatch(path):
        return s.upload_part_bytes, "GPTJOBS_UPLOAD_PART_BYTES"
    if method == "POST" and path in ("/datasets", "/runs/import"):
        return s.max_upload_bytes + MULTIPART_OVERHEAD, "GPTJOBS_MAX_UPLOAD_BYTES"
    return s.max_body_bytes, "GPTJOBS_MAX_BODY_BYTES"


PART_PATH = re.compile(r"/uploads/[^/]+/parts/[^/]+")
MULTIPART_OVERHEAD = 64 << 10  # a form's other fields and boundaries, beside the file


app = create_app()
