"""The Celery app: `celery -A worker.app worker -Q train -P solo` (or `gptjobs worker`).

One process trains one run at a time (solo pool): CUDA and fork do not mix, and a
prefork child of a parent that ran any torch op hangs at its first forward pass.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from api.queue import SAMPLE_QUEUE, TRAIN_QUEUE, make_celery
from api.settings import get_settings, usable_cores

log = logging.getLogger(__name__)

app = make_celery(get_settings())
app.conf.update(
    include=["worker.tasks", "worker.sample"],
    worker_prefetch_multiplier=1,  # never reserve a second run while training one
    # Acks are late: a message leaves the queue only when its run is done, so a worker
    # killed mid-run leaves the run for redelivery rather than losing it. Redelivery of a
    # run that is not `queued` any more (a duplicate, or a run still training elsewhere
    # after visibility_timeout) is skipped by the task's claim; resuming a run whose
    # worker died is the lease's job (issue 5), not the broker's.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)


@signals.celeryd_init.connect
def _warm_up(options: dict[str, Any] | None = None, **_: Any) -> None:
    """Pay torch's import (~2 s) and first optimizer step (~1.5 s) or forward pass once per
    worker, not in the first run or sampling request."""
    queues = (options or {}).get("queues") or [TRAIN_QUEUE]
    if isinstance(queues, str):
        queues = queues.split(",")
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
