"""The Celery app: `celery -A worker.app worker -Q train -P solo` (or `gptjobs worker`).

One process trains one run at a time (solo pool): CUDA and fork do not mix, and a
prefork child of a parent that ran any torch op hangs at its first forward pass.

A training worker owns devices: `--gpus 0,1,2,3` (which becomes CUDA_VISIBLE_DEVICES) or,
on CPU, `--nproc N` (ranks of N processes). api/cli.py `worker_argv` gives it the queues of
the runs that fit (api/queue.py `train_queues`); it says what it owns in Redis
(api/capacity.py) for as long as it is up, so that a run nobody can serve says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import click
import redis
from celery import signals

from api import capacity
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
app.user_options["worker"].add(
    click.Option(["--gpus"], default=None, help="the GPUs this training worker owns: 0,1,2,3 (CUDA_VISIBLE_DEVICES)")
)
app.user_options["worker"].add(
    click.Option(["--nproc"], type=int, default=None, help="without GPUs: the ranks a run may have on this worker")
)


@dataclass(frozen=True)
class Devices:
    count: int = 1
    kind: str = "cpu"  # or "cuda"; "auto" until the worker starts: a run of one process chooses


devices = Devices(kind="auto")  # what this worker owns, set at its start
_announcing = threading.Event()  # set: stop announcing (the worker is shutting down)
_announced_as: str | None = None  # this worker's entry in api.capacity's registry


@lru_cache
def database() -> Database:
    """This worker process's engines: one per process, made on first use."""
    return Database(get_settings().db_url)


@lru_cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


@signals.celeryd_init.connect
def _warm_up(sender: Any = None, options: dict[str, Any] | None = None, **_: Any) -> None:
    """Pay torch's import (~2 s) and first optimizer step (~1.5 s) or forward pass once per
    worker, not in the first run or sampling request; then say it is ready."""
    queues = (options or {}).get("queues") or [TRAIN_QUEUE]
    if isinstance(queues, str):
        queues = queues.split(",")
    if TRAIN_QUEUE in queues:
        _own_devices(str(sender), (options or {}).get("gpus"), (options or {}).get("nproc"))
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


def _own_devices(name: str, gpus: str | None, nproc: int | None) -> None:
    """Take the devices given on the command line (before torch is imported: CUDA reads
    CUDA_VISIBLE_DEVICES once) and announce them until the worker stops."""
    global devices, _announced_as
    _announced_as = name
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
        devices = Devices(len(gpus.split(",")), "cuda")
    elif nproc:
        devices = Devices(nproc, "cpu")
    else:
        devices = Devices(1, "auto")
    ttl = max(3.0, get_settings().lease_ttl_s)

    def announce() -> None:
        while not _announcing.is_set():
            try:
                capacity.announce(redis_client(), name, devices.count, devices.kind, ttl)
            except redis.RedisError as e:
                log.debug("could not announce this worker's devices: %s", e)
            _announcing.wait(ttl / 3)

    threading.Thread(target=announce, name="announce", daemon=True).start()
    log.info("training worker %s owns %d %s device(s)", name, devices.count, devices.kind)


@signals.worker_shutdown.connect
def _withdraw(**_: Any) -> None:
    if _announced_as is None or _announcing.is_set():
        return
    _announcing.set()
    with contextlib.suppress(redis.RedisError):  # else its entry lapses on its own
        capacity.withdraw(redis_client(), _announced_as)
