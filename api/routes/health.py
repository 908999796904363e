"""GET /healthz: whether this API replica can reach what it needs. Open to anyone (no key),
for load balancers and `gptjobs up`'s start-up wait."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.deps import DbDep, RedisDep
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(db: DbDep, r: RedisDep) -> JSONResponse:
    """200 when the database and Redis both answer, else 503 naming the one that does not."""
    result = {"database": "ok", "redis": "ok"}

    def ping_db() -> None:
        with db.session() as s:
            s.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(run_in_threadpool(ping_db), 5)
    except Exception as e:
        result["database"] = f"error: {type(e).__name__}: {e}"
    try:
        await asyncio.wait_for(r.ping(), 5)
    except Exception as e:
        result["redis"] = f"error: {type(e).__name__}: {e}"
    ok = result == {"database": "ok", "redis": "ok"}
    return JSONResponse(result, status_code=200 if ok else 503)
