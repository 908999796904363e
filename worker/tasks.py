"""The training task: claim the run, iterate gpt/'s events, ship them, record the end.

A run on one device trains in this process. One on several (nproc_per_node x nnodes > 1)
trains in ranks that torch's elastic launcher starts (worker/group.py); rank 0's events
come back over a line to this process, which still holds the lease, ships them and records
the end, and names the rank when one dies. A run over several machines is led by the
worker that claimed it; the others join its group (`train_join`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import redis
from celery import signals
from sqlalchemy import update

from api import datasets, lifecycle
from api.db import Database, Dataset, R, Run
from api.lifecycle import CANCELLED, FAILED, PRUNED, QUEUED, RECOVERING, RUNNING, is_final
from api.queue import JOIN_TASK, TRAIN_TASK, train_queue
from api.redis_keys import group_key, group_leaving_key
from api.settings import Settings, get_settings, usable_cores
from gpt.checkpoint import LATEST, PARENT
from gpt.checkpoint import keep as keep_checkpoint
from gpt.config import make_config
from gpt.store import Cache
from worker.app import app, database, redis_client
from worker.group import Group, GroupError, Plan
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
    group: Group | None = None
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
        data_dir = str(settings.datasets_dir().resolve())

        def should_stop() -> bool:
            return sink.should_stop() or _shutting_down.is_set()

        if cfg.world_size() == 1:
            from gpt.train import train as train_loop  # torch: the worker warmed it up at start

            events = train_loop(
                cfg,
                should_stop=should_stop,
                data_dir=data_dir,
                num_threads=settings.torch_threads or usable_cores(),
                before_save=sink.fence,
                out=out,
            )
        else:
            group = _lead(run, cfg.to_dict(), data_dir, settings)
            events = group.events(should_stop, sink.fence, _Leaving(run_id, run.attempt, settings))
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
    except GroupError as e:
        requeue = _group_ended(sink, run, settings, e)
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
        if group is not None:
            group.close()  # rank 0 hangs up if it has not yet; the launcher ends the rest
            if group.plan.nnodes > 1:
                with contextlib.suppress(redis.RedisError):
                    redis_client().delete(group_key(run_id))
        try:
            sink.close()
        except LeaseLost:
            pass
        except Exception:
            log.exception("run %s: could not flush the last events", run_id)
        lease.close(release=True)
    if requeue:
        try:
            app.send_task(TRAIN_TASK, args=[run_id], queue=train_queue(run.config))
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


def _logs(settings: Settings, run_id: str) -> Path:
    """Where this machine keeps the ranks' logs of a run (local: the artifacts may be a store)."""
    return settings.cache() / "runs" / run_id / "logs"


def _lead(run: Run, config: dict[str, Any], data_dir: str, settings: Settings) -> Group:
    """This attempt's group, started; for a run over several machines, its plan published and
    the other machines' workers asked to join (as many messages as it needs)."""
    group = Group.lead_for(
        run.id,
        run.attempt,
        config,
        data_dir=data_dir,
        log_dir=_logs(settings, run.id) / f"attempt-{run.attempt}",
        settings=settings,
    )
    plan = group.plan
    if plan.nnodes > 1:
        r = redis_client()
        r.set(group_key(run.id), plan.dumps(), ex=int(2 * settings.rendezvous_timeout_s) + 60)
        for _ in range(plan.nnodes - 1):
            app.send_task(JOIN_TASK, args=[run.id, run.attempt], queue=train_queue(config))
        with database().transaction() as s:  # what the run waits for, until its first event says more
            s.execute(
                update(Run)
                .where(R.id == run.id, R.status == RUNNING, R.attempt == run.attempt)
                .values(
                    reason=f"forming its group: waiting for {plan.nnodes - 1} more worker(s) with "
                    f"{plan.nproc_per_node} device(s) each to join, for up to {settings.rendezvous_timeout_s:g} s"
                )
            )
    log.info(
        "run %s: attempt %d: %d ranks on %d machine(s)",
        run.id,
        run.attempt,
        plan.nproc_per_node * plan.nnodes,
        plan.nnodes,
    )
    return group.start()


class _Leaving:
    """Whether another worker of the group is shutting down (a Redis flag, looked at every
    cancel_check_s): the group then stops as at this worker's own shutdown."""

    def __init__(self, run_id: str, attempt: int, settings: Settings):
        self.key, self.every = group_leaving_key(run_id, attempt), settings.cancel_check_s
        self.seen, self.next_check = False, 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.seen and now >= self.next_check:
            self.next_check = now + self.every
            with contextlib.suppress(redis.RedisError):
                self.seen = bool(redis_client().exists(self.key))
        return self.seen


def _group_ended(sink: EventSink, run: Run, settings: Settings, e: GroupError) -> bool:
    """The status a group's early end gives the run; True when it goes back to the queue."""
    if not e.formed:  # it never trained: no restart used up
        if sink.cancelled:
            sink.emit(_status(CANCELLED, f"cancelled while {e.reason.removeprefix('stopped while ')}"))
            return False
        if _shutting_down.is_set():
            reason = "the worker shut down while its group was forming; the run waits for a worker"
        else:
            reason = f"{e.reason}; back in the queue until enough workers are free"
        sink.emit(_status(QUEUED, reason))
        return True
    limit = run.max_restarts if run.max_restarts is not None else settings.max_restarts
    if run.restarts >= limit:
        sink.emit(_status(FAILED, f"{e.reason}; max_restarts ({limit}) is used up"))
        return False
    sink.emit(
        _status(
            RECOVERING,
            f"{e.reason}; queued to resume from its newest checkpoint (restart {run.restarts + 1} of {limit})",
        )
    )
    return True


@app.task(name=JOIN_TASK)
def train_join(run_id: str, attempt: int) -> None:
    """This machine's share of a run over several: the lead's group, joined if still forming."""
    settings, r = get_settings(), redis_client()
    raw = r.get(group_key(run_id))
    plan = Plan.loads(raw) if raw else None
    with database().session() as s:
        row = s.get(Run, run_id)
    if plan is None or plan.attempt != attempt or row is None or row.status != RUNNING or row.attempt != attempt:
        log.info("run %s: attempt %d's group is gone; not joining", run_id, attempt)
        return
    log.info("run %s: joining attempt %d's group (%d ranks here)", run_id, attempt, plan.nproc_per_node)
    name = f"attempt-{attempt}-{socket.gethostname()}-{os.getpid()}"
    group = Group.follow(plan, log_dir=_logs(settings, run_id) / name, settings=settings).start()
    told = False
    while not group.wait(0.2):
        if _shutting_down.is_set() and not told:  # the lead stops the group; this returns when it has
            with contextlib.suppress(redis.RedisError):
                r.set(group_leaving_key(run_id, attempt), 1, ex=86400)
                told = True
    if group.error is not None:
        log.warning("run %s: this worker's share of attempt %d ended: %s", run_id, attempt, group.error)
    log.info("run %s: left attempt %d's group", run_id, attempt)


def _status(status: str, reason: str) -> dict[str, Any]:
    return {"type": "status", "ts": time.time(), "status": status, "reason": reason}


def _requeue_reason(ev: dict[str, Any]) -> str:
    return f"the worker shut down; the run resumes from its checkpoint at iter {ev.get('iter')} when a worker starts"


def _fail(sink: EventSink, reason: str) -> None:
    ev: dict[str, Any] = {"type": "status", "ts": time.time(), "status": FAILED, "reason": reason}
    try:
        sink.emit(ev)
    except Exception:
        log.exception("run %s: could not record the failure", sink.run_id)
