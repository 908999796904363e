"""The Celery client side: queue names and broker settings shared by the API and workers.

The API sends tasks by name (`send_task("worker.train", ...)`) and never imports worker/.
"""

from __future__ import annotations

from celery import Celery

from api.settings import Settings

TRAIN_QUEUE = "train"
SAMPLE_QUEUE = "sample"
TRAIN_TASK = "worker.train"


def make_celery(settings: Settings) -> Celery:
    app = Celery("gptjobs", broker=settings.redis_url)
    app.conf.update(
        task_default_queue=TRAIN_QUEUE,
        task_routes={TRAIN_TASK: {"queue": TRAIN_QUEUE}, "worker.sample.*": {"queue": SAMPLE_QUEUE}},
        task_ignore_result=True,  # results live in the database; there is no result backend
        broker_connection_retry_on_startup=True,
        # A message unacked this long is handed to another worker, even while its first
        # worker is still training (acks are late, see worker/app.py). The task's
        # queued->running claim makes such a second delivery a no-op.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
    )
    return app
