"""The FastAPI app: `uvicorn api.main:app` (or `gptjobs serve`). Never imports torch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.auth import redact_server_logs
from api.db import Database
from api.limits import BodyLimit, validation_error
from api.metrics import install as install_metrics
from api.queue import make_celery
from api.reaper import Reaper
from api.relay import Relay
from api.routes import dashboard, runs, samples
from api.schemas import Health
from api.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
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
    app.include_router(runs.router)
    app.include_router(samples.router)
    app.include_router(dashboard.router)  # GET / (the web dashboard) and GET /config/defaults
    app.mount(dashboard.STATIC_PATH, dashboard.static_files(), name="static")
    # Bad input is a 4xx naming the field: bodies over GPTJOBS_MAX_BODY_BYTES, and inputs like 1e400.
    app.add_middleware(BodyLimit, max_bytes=lambda: app.state.settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)
    install_metrics(app)  # GET /metrics; last, so that its middleware also times BodyLimit's answers

    @app.get("/healthz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    async def healthz(request: Request) -> JSONResponse:
        """200 when the database and Redis both answer, else 503 naming the one that does not."""
        state = request.app.state
        result = {"database": "ok", "redis": "ok"}

        def ping_db() -> None:
            with state.db.session() as s:
                s.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(run_in_threadpool(ping_db), 5)
        except Exception as e:
            result["database"] = f"error: {type(e).__name__}: {e}"
        try:
            await asyncio.wait_for(state.redis.ping(), 5)
        except Exception as e:
            result["redis"] = f"error: {type(e).__name__}: {e}"
        ok = result == {"database": "ok", "redis": "ok"}
        return JSONResponse(result, status_code=200 if ok else 503)

    return app


app = create_app()
