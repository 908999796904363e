"""GET /metrics: Prometheus' text exposition (what it holds: api/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import CallerDep, DbDep, MetricsDep, RedisDep
from api.metrics import scrape

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format"}},
)
async def get_metrics(
    metrics: MetricsDep,
    db: DbDep,
    r: RedisDep,
    # Like /runs, it needs a key once keys exist: it names the running runs (their ids,
    # tokens/s, MFU). Prometheus sends one with `authorization: {credentials: ...}`.
    _caller: CallerDep,
) -> Response:
    """Prometheus metrics: runs by status, queue depths, events written, WebSocket clients,
    HTTP latency, and each running run's tokens/s and MFU."""
    return Response(await scrape(metrics, db, r), media_type=CONTENT_TYPE_LATEST)
