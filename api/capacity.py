"""Which training workers are connected and how many devices each owns; what a run waits for.

Each training worker (worker/app.py) renews its entry in the hash `TRAIN_WORKERS` every few
seconds: {"devices": N, "kind": "cuda" | "cpu", "until": epoch seconds}. An entry past its
`until` is a worker gone (killed without saying so) and counts for nothing.

The queues already send a run only to a worker owning enough devices (api/queue.py
`train_queue`); this module is for saying why a run waits: one that no connected worker (or,
across machines, no set of them) can serve gets a reason that says so, set by the reaper.

Torch-free: the API reads it, the workers write it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from api.redis_keys import TRAIN_WORKERS

# What the reaper writes into a waiting run's reason starts so; a reason of another kind
# (a worker that shut down, a group that did not form) is left alone.
WAITING_FOR = "waiting for "


def announce(r: Any, name: str, devices: int, kind: str, ttl_s: float) -> None:
    """A worker's entry, good for ttl_s (a sync Redis client: the worker's)."""
    r.hset(TRAIN_WORKERS, name, json.dumps({"devices": devices, "kind": kind, "until": time.time() + ttl_s}))


def withdraw(r: Any, name: str) -> None:
    r.hdel(TRAIN_WORKERS, name)


def live_devices(raw: Mapping[Any, Any], now: float | None = None) -> tuple[list[int], list[Any]]:
    """From HGETALL of TRAIN_WORKERS: the device counts of live workers, and the fields of
    entries that lapsed (for HDEL)."""
    now = time.time() if now is None else now
    live, gone = [], []
    for name, value in raw.items():
        try:
            e = json.loads(value)
            devices, until = int(e["devices"]), float(e["until"])
        except (ValueError, KeyError, TypeError):
            gone.append(name)
            continue
        if until < now:
            gone.append(name)
        else:
            live.append(devices)
    return live, gone


def waiting_reason(config: Mapping[str, Any], devices: list[int]) -> str | None:
    """Why a run needing config's devices cannot start on the connected workers (`devices`,
    one count each), or None when they could serve it (when one is free)."""
    per_node = int(config.get("nproc_per_node") or 1)
    nodes = int(config.get("nnodes") or 1)
    able = sum(d >= per_node for d in devices)
    if able >= nodes:
        return None
    unit = "device" if per_node == 1 else "devices"
    if not devices:
        have = "no training worker is connected"
    elif nodes == 1:
        have = f"the largest connected has {max(devices)}"
    else:
        have = f"{able} connected {'has' if able == 1 else 'have'} that many"
    if nodes == 1:
        return f"{WAITING_FOR}a worker with {per_node} {unit}; {have}"
    return f"{WAITING_FOR}{nodes} workers with {per_node} {unit} each (a run over {nodes} machines); {have}"
