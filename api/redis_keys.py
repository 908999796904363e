"""Every Redis key gptjobs reads or writes, by name. Redis holds only what is live (streams,
leases, flags, sampling answers, rate-limit counters, Celery's queues); the database holds
what lasts. Torch-free and FastAPI-free: the API, the workers and the tests share it.
"""

from __future__ import annotations


def stream_key(run_id: str) -> str:
    """The run's live events (XADD by its worker, capped; each entry `s` seq, `e` JSON, `f` if final)."""
    return f"run:{run_id}:events"


def lease_key(run_id: str) -> str:
    """The attempt number of the worker training the run, with a TTL its heartbeat renews."""
    return f"run:{run_id}:lease"


def dataset_lease_key(dataset_id: str) -> str:
    """The attempt number of the worker preparing the dataset, renewed like a run's lease."""
    return f"dataset:{dataset_id}:lease"


def cancel_key(run_id: str) -> str:
    """Set by the API to ask a running run to stop; the worker checks it every step."""
    return f"run:{run_id}:cancel"


def prune_key(run_id: str) -> str:
    """Set by the sweep controller to end a running run `pruned`; holds the reason. The worker
    checks it with the cancel flag: the run stops the same way, checkpoint first."""
    return f"run:{run_id}:prune"


# The sweep controller's lease: the token of the one API process acting for every sweep now,
# with a TTL it renews (api/sweeper.py).
SWEEP_CONTROLLER = "sweeps:controller"


def group_key(run_id: str) -> str:
    """A run on several machines: where its group meets (rendezvous endpoint, rank 0's line to
    the worker holding the run, the config), for the attempt that published it."""
    return f"run:{run_id}:group"


def group_leaving_key(run_id: str, attempt: int) -> str:
    """Set by a worker of the group (not the one holding the run) that is shutting down: the
    group checkpoints and the run goes back to the queue."""
    return f"run:{run_id}:group:{attempt}:leaving"


# Training workers and the devices each owns: a hash {node name: JSON {"devices", "kind",
# "until"}}, each entry renewed by its worker; one not renewed by "until" is gone.
TRAIN_WORKERS = "workers:train"


def sample_reply_key(request_id: str) -> str:
    """A sampling request's answer: a list the worker RPUSHes and the API BLPOPs."""
    return f"sample:{request_id}"


def sample_stop_key(request_id: str) -> str:
    """Set when the API stops listening to a sampling request: the worker stops generating."""
    return f"sample:{request_id}:stop"


def sample_quota_key(owner: str | None, minute: int) -> str:
    """One owner's sampling requests in one wall-clock minute (a fixed-window counter)."""
    return f"quota:samples:{owner or ''}:{minute}"


# Celery's Redis transport (kombu) keeps each queue as a list named after the queue, and the
# messages delivered but not yet acknowledged in this hash of [message, exchange, routing key].
UNACKED = "unacked"
