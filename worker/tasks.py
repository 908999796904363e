"""The training task: claim the run, iterate gpt/'s events, ship them, record the end."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from celery import signals

from api import datasets, lifecycle
from api.db import Database, Dataset, Run
from api.lifecycle import CANCELLED, FAILED, PRUNED, QUEUED, is_final
from api.queue import TRAIN_TASK
from api.settings import get_settings, usable_cores
from gpt.checkpoint import LATEST, PARENT
from gpt.checkpoint import keep as keep_checkpoint
from gpt.config import make_config
from gpt.store import Cache
from worker.app import app, database, redis_client
from worker.lease import Lease, LeaseLost
from worker.sink import EventSink

log = logging.getLogger(__name__)


# Set when the worker is asked to stop (Ctrl-C on `gptjobs up`, a container stop): the run
# in hand checkpoints at its next step and goes back to the queue instead of being lost.
_shutting_down = threading.Event()


@signals.worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    _shutting_down.set()


def claim(db: Database, run_id: str) -> Run | None:
    """The run, now running under this worker's attempt; None when it is gone, ended or
    taken (a second delivery of its message is a no-op)."""
    with db.transaction() as s:
        return s.get(Run, run_id) if lifecycle.claim(s, run_id) else None


@app.task(name="worker.train")
def train(run_id: str) -> None:
    settings, db = get_settings(), database()
    run = claim(db, run_id)
    if run is None:
        log.info("run %s: not queued any more, skipping this delivery", run_id)
        return
    log.info("run %s: attempt %d starting", run_id, run.attempt)
    lease = Lease.for_run(redis_client(), run_id, run.attempt, settings.lease_ttl_s)
    lease.acquire()
    ended = requeue = False
    try:
        sink = EventSink(db, redis_client(), settings, run_id, lease)
    except Exception:
        lease.close(release=False)  # the reaper hands the run on when the lease expires
        raise
    try:
        out = settings.run_store(run_id)
        overrides = {**run.config, "out_dir": out.where()}
        if run.parent_run_id:  # the API copied the parent's checkpoint here when it made the run
            overrides["init_from"] = str(out.local_file(PARENT, settings.cache() / "runs" / run_id / PARENT))
        if run.attempt > 1 and out.exists(LATEST):
            overrides["init_from"] = "resume"  # from its own newest checkpoint, else where it started
        if run.dataset_id:  # the API checked it is the owner's and ready; a run in use cannot be deleted
            overrides["dataset"] = str(_prepared(db, run.dataset_id))
        # Paths only as the worker itself put them: the API took a dataset id and a run id.
        local = run.dataset_id is not None or run.parent_run_id is not None
        cfg = make_config(overrides, max_params=settings.max_params, allow_paths=local)
        from gpt.train import train as train_loop  # torch: the worker warmed it up at start

        events = train_loop(
            cfg,
            should_stop=lambda: sink.should_stop() or _shutting_down.is_set(),
            data_dir=str(settings.datasets_dir().resolve()),
            num_threads=settings.torch_threads or usable_cores(),
            before_save=sink.fence,
            out=out,
        )
        for ev in events:
            if is_final(ev) and ev["status"] == CANCELLED and sink.pruned is not None:
                # Stopped by its sweep's early stopping: the reason is the controller's.
                ev = {**ev, "status": PRUNED, "reason": f"{sink.pruned}; checkpoint saved at iter {ev.get('iter')}"}
            elif is_final(ev) and ev["status"] == CANCELLED and not sink.cancelled:
                # Stopped by the shutdown, not by the user: back to the queue.
                requeue = True
                ev = {**ev, "status": QUEUED, "reason": _requeue_reason(ev)}
            if ev["type"] == "checkpoint":
                # Named by its iter before anyone hears of it (the engine waits at this yield,
                # so ckpt.pt is still this checkpoint): GET /runs/{id}/checkpoints/{iter}.
                try:
                    keep_checkpoint(out, ev["iter"], settings.keep_checkpoints)
                except OSError as e:  # the run goes on; ckpt.pt and best.pt are still there
                    log.warning("run %s: could not keep the checkpoint at iter %s: %s", run_id, ev["iter"], e)
            sink.emit(ev)
            ended = is_final(ev) or requeue
        if not ended:
            _fail(sink, "the training loop ended without a final status")
    except LeaseLost as e:
        # The lease lapsed (this worker was frozen or cut off for longer than it): the run
        # resumes from its last checkpoint under a new attempt. What this one already sent
        # live is saved if the database still says the run is ours (Redis lost the lease,
        # or nobody took over yet), so that no seq a client saw is ever given out again;
        # else the guard refuses it and this attempt writes nothing more.
        log.warning("run %s: %s; stopping", run_id, e)
        try:
            sink.flush()
        except LeaseLost:
            sink.pending = []
    except Exception as e:
        log.exception("run %s failed", run_id)
        if not ended:
            _fail(sink, f"{type(e).__name__}: {e}")
    finally:
        try:
            sink.close()
        except LeaseLost:
            pass
        except Exception:
            log.exception("run %s: could not flush the last events", run_id)
        lease.close(release=True)
    if requeue:
        try:
            app.send_task(TRAIN_TASK, args=[run_id])
            log.info("run %s: requeued at shutdown, resumes at iter %s", run_id, ev.get("iter"))
        except Exception as e:  # the run is `queued` in the database: the reaper sends it again
            log.warning("run %s: could not requeue it (%s); the API's reaper will", run_id, e)
    log.info("run %s: attempt %d done", run_id, run.attempt)


def _prepared(db: Database, dataset_id: str) -> Path:
    """Where a user's dataset was prepared, as a local directory: its folder in the data
    directory, or this worker's cached copy of it from an object store."""
    with db.session() as s:
        ds = s.get(Dataset, dataset_id)
    if ds is None:
        raise RuntimeError(f"dataset {dataset_id} is gone")
    settings = get_settings()
    store, folder = settings.store(), datasets.prepared(ds.content_key)
    cache = Cache(settings.cache() / "datasets", settings.cache_max_bytes)
    return cache.folder(store, folder, store.list(folder)).resolve()


def _requeue_reason(ev: dict[str, Any]) -> str:
    return f"the worker shut down; the run resumes from its checkpoint at iter {ev.get('iter')} when a worker starts"


def _fail(sink: EventSink, reason: str) -> None:
    ev: dict[str, Any] = {"type": "status", "ts": time.time(), "status": FAILED, "reason": reason}
    try:
        sink.emit(ev)
    except Exception:
        log.exception("run %s: could not record the failure", sink.run_id)
