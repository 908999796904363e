"""`client.sweeps`: searches over runs. A sweep is created from one spec (the base config,
the parameters, the method, the budget, early stopping), read with every run's parameters,
status and best val loss, followed to its end, and cancelled.

Knows the /sweeps endpoints; a sweep's runs are runs (`client.runs`), listed here too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gptjobs.errors import Timeout
from gptjobs.transport import Transport
from gptjobs.types import Run, Sweep

Runs = list[Run]  # (Sweeps.list hides the builtin inside the class)


class Sweeps:
    def __init__(self, transport: Transport):
        self._t = transport

    def create(self, spec: dict[str, Any]) -> Sweep:
        """Start a sweep. `spec` is POST /sweeps' body: {"name", "config": {...}, "parameters":
        {"learning_rate": {"min": 1e-4, "max": 1e-2, "log": True}, "n_layer": {"values": [2, 4]}},
        "method": "grid|random|tpe", "max_runs", "max_concurrent", "early_stop": {"type": "asha",
        "min_iter", "reduction_factor"}, "seed"}. A combination of values that makes a bad config
        is a ValidationError naming the values, before any run is queued."""
        return Sweep.from_json(self._t.json("POST", "/sweeps", json=spec))

    def get(self, sweep_id: str) -> Sweep:
        """The sweep with its runs, the best so far and how many are left."""
        return Sweep.from_json(self._t.json("GET", f"/sweeps/{sweep_id}"))

    def list(self, limit: int = 50) -> list[Sweep]:
        """Your sweeps, newest first (without their runs: get() has them)."""
        return [Sweep.from_json(w) for w in self._t.json("GET", "/sweeps", params={"limit": limit})["sweeps"]]

    def cancel(self, sweep_id: str) -> Sweep:
        """Cancel it: no more runs start, queued ones end at once, running ones checkpoint and
        end `cancelled`. An ended sweep is a Conflict."""
        return Sweep.from_json(self._t.json("POST", f"/sweeps/{sweep_id}/cancel"))

    def runs(self, sweep_id: str, limit: int = 200) -> Runs:
        """Its runs as runs (GET /runs?sweep=), newest first."""
        page = self._t.json("GET", "/runs", params={"sweep": sweep_id, "limit": limit})
        return [Run.from_json(r) for r in page["runs"]]

    def wait(
        self,
        sweep_id: str,
        timeout: float | None = None,
        poll_s: float = 2.0,
        progress: Callable[[Sweep], None] | None = None,
    ) -> Sweep:
        """Until the sweep has ended (returned: look at .status and .best); `progress` gets it
        at every poll. Timeout after `timeout` seconds (the sweep goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (sweep := self.get(sweep_id)).ended:
            if progress:
                progress(sweep)
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout(f"sweep {sweep_id} is still {sweep.status} after {timeout:g} s")
            time.sleep(poll_s)
        return sweep
