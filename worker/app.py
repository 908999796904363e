"""The Celery app: `celery -A worker.app worker -Q train -P solo` (or `gptjobs worker`).

One process trains one run at a time (solo pool): CUDA and fork do not mix, and a
prefork child of a parent that ran any torch op hangs at its first forward pass.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import redis
from celery import signals

from api.db import Database
from api.queue import SAMPLE_QUEUE, TRAIN_QUEUE, make_celery
from api.settings import get_settings, usable_cores

log = logging.getLogger(__name__)

app = make_celery(get_settings())
app.conf.update(
    include=["worker.tasks", "worker.sample", "worker.prepare", "worker.weights"],
    worker_prefetch_multiplier=1,  # never reserve a second run while training one
    # Acks are late: a message leaves the queue only when its task returns, so one lost
    # between delivery and the claim (worker killed in that moment) is delivered again
    # after visibility_timeout. Resuming a run whose worker died mid-run is the lease's
    # job (api/reaper.py, in seconds), not the broker's (an hour); every extra delivery
    # (that one, a duplicate, or the broker's re-delivery of a run still training after
    # visibility_timeout) finds the run not `queued` and is a no-op (worker/tasks.py claim).
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)


@lru_cache
def database() -> Database:
    """This worker process's engines: one per process, made on first use."""
    return Database(get_settings().db_url)


@lru_cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


@signals.celeryd_init.connect
def _warm_up(options: dict[str, Any] | None = None, **_: Any) -> None:
    """Pay torch's import (~2 s) and first optimizer step (~1.5 s) or forward pass once per
    worker, not in the first run or sampling request; then say it is ready."""
    queues = (options or {}).get("queues") or [TRAIN_QUEUE]
    if isinstance(queues, str):
        queues = queues.split(",")
    if not {TRAIN_QUEUE, SAMPLE_QUEUE} & set(queues):  # preparing datasets needs no torch
        cores = get_settings().prepare_workers or usable_cores()
        log.info("%s worker ready: %d tokenizer processes for large files", "+".join(queues), cores)
        return
    import torch

    threads = get_settings().torch_threads or usable_cores()
    torch.set_num_threads(threads)  # oversubscribed threads cost 30x on a busy machine
    if TRAIN_QUEUE in queues:
        p = torch.zeros(8, requires_grad=True)
        opt = torch.optim.AdamW([p])
        p.sum().backward()
        opt.step()
    if SAMPLE_QUEUE in queues:
        from worker.sample import warm_up

        warm_up()
    log.info("%s worker ready: torch %s, %d threads", "+".join(queues), torch.__version__, threads)
