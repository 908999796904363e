"""The Celery client side: queue names and broker settings shared by the API and workers.

The API sends tasks by name (`send_task("worker.train", ...)`) and never imports worker/.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery

from api.settings import Settings

TRAIN_QUEUE = "train"  # runs on one device; one on N devices per machine waits in "train.N"
SAMPLE_QUEUE = "sample"
PREPARE_QUEUE = "prepare"
TRAIN_TASK = "worker.train"
SAMPLE_TASK = "worker.sample.generate"
PREPARE_TASK = "worker.prepare"  # args: dataset id, the attempt it was sent for
JOIN_TASK = "worker.train_join"  # args: run id, attempt: another machine's share of a run on several
# Weights in and out, answered like a sampling request (api/rpc.py), by the sampling workers.
IMPORT_TASK = "worker.weights.import"  # args: request id, run id, upload path, file name, vocab path
EXPORT_TASK = "worker.weights.export"  # args: request id, run id, checkpoint name, its version, output name

# A sampling request's answer travels back on its own Redis list (redis_keys.sample_reply_key): the worker
# RPUSHes, the API BLPOPs (well below redis-py's 5 s socket timeout). Each element is a JSON
# array of messages, in this order:
#   {"t": "accepted"}                                a worker took the request
#   {"t": "start", "checkpoint_iter": int}           the checkpoint is loaded
#   {"t": "text", "p": [str, ...]}                   new text, one piece per sample
#   {"t": "end", "new_tokens": int, "tokens_per_s": float}
# The weights' tasks answer {"t": "accepted"}, then {"t": "done", ...what was made}.
# Either, at any point: {"t": "error", "status": int, "detail": str, "loc": [...] | null, "input": ...}.
# The API sets redis_keys.sample_stop_key when it stops listening; the worker then stops generating.
SAMPLE_REPLY_TTL_S = 600  # refreshed by each push: an answer nobody reads does not linger


def make_celery(settings: Settings) -> Celery:
    app = Celery("gptjobs", broker=settings.redis_url)
    app.conf.update(
        task_default_queue=TRAIN_QUEUE,
        task_routes={
            TRAIN_TASK: {"queue": TRAIN_QUEUE},
            "worker.sample.*": {"queue": SAMPLE_QUEUE},
            "worker.weights.*": {"queue": SAMPLE_QUEUE},
            PREPARE_TASK: {"queue": PREPARE_QUEUE},
        },
        task_ignore_result=True,  # results live in the database; there is no result backend
        broker_connection_retry_on_startup=True,
        # A message unacked this long is handed to another worker, even while its first
        # worker is still training (acks are late, see worker/app.py). The task's claim
        # makes such a second delivery a no-op; a dead worker's run is the reaper's.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
    )
    return app


def train_queue(config: Mapping[str, Any]) -> str:
    """The queue of a run with this config: by the devices it needs on each machine, so that
    only a worker owning that many takes it (a worker with N consumes train_queues(N))."""
    n = int(config.get("nproc_per_node") or 1)
    return TRAIN_QUEUE if n <= 1 else f"{TRAIN_QUEUE}.{n}"


def train_queues(devices: int) -> list[str]:
    """What a training worker owning `devices` devices consumes: every run that fits."""
    return [train_queue({"nproc_per_node": n}) for n in range(1, max(1, devices) + 1)]
