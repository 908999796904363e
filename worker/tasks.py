"""The training task: claim the run, iterate gpt/'s events, ship them, record the end."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

import redis
from sqlalchemy import update

from api.db import Database, R, Run, is_final
from api.settings import get_settings, usable_cores
from gpt.config import make_config
from worker.app import app
from worker.sink import EventSink

log = logging.getLogger(__name__)


@lru_cache
def _db() -> Database:
    return Database(get_settings().db_url)


@lru_cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


def claim(db: Database, run_id: str) -> Run | None:
    """queued -> running, atomically; None when the run is gone, cancelled or taken."""
    with db.transaction() as s:
        res = s.execute(
            update(Run)
            .where(R.id == run_id, R.status == "queued")
            .values(status="running", attempt=R.attempt + 1, started_at=time.time(), reason=None)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return s.get(Run, run_id)


@app.task(name="worker.train")
def train(run_id: str) -> None:
    settings, db = get_settings(), _db()
    run = claim(db, run_id)
    if run is None:
        log.info("run %s: not queued any more, skipping this delivery", run_id)
        return
    log.info("run %s: attempt %d starting", run_id, run.attempt)
    sink = EventSink(db, _redis(), settings, run_id, run.attempt)
    ended = False
    try:
        out_dir = (settings.runs_dir() / run_id).resolve()
        cfg = make_config({**run.config, "out_dir": str(out_dir)}, max_params=settings.max_params, allow_paths=False)
        from gpt.train import train as train_loop  # torch: the worker warmed it up at start

        events = train_loop(
            cfg,
            should_stop=sink.should_stop,
            data_dir=str(settings.datasets_dir().resolve()),
            num_threads=settings.torch_threads or usable_cores(),
        )
        for ev in events:
            sink.emit(ev)
            ended = is_final(ev)
        if not ended:
            _fail(sink, "the training loop ended without a final status")
    except Exception as e:
        log.exception("run %s failed", run_id)
        if not ended:
            _fail(sink, f"{type(e).__name__}: {e}")
    finally:
        try:
            sink.close()
        except Exception:
            log.exception("run %s: could not flush the last events", run_id)
    log.info("run %s: attempt %d done", run_id, run.attempt)


def _fail(sink: EventSink, reason: str) -> None:
    ev: dict[str, Any] = {"type": "status", "ts": time.time(), "status": "failed", "reason": reason}
    try:
        sink.emit(ev)
    except Exception:
        log.exception("run %s: could not record the failure", sink.run_id)
