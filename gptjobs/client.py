"""`gptjobs.Client`: one server, one key, and the resources under it as attributes.

    client.runs      /runs: create, get, list, cancel, events, stream, wait, log, sample,
                     checkpoints (gptjobs/runs.py)
    client.datasets  /datasets and /uploads: upload (resumable), create, get, list, wait,
                     delete (gptjobs/datasets.py)
    client.sweeps    /sweeps: create, get, list, cancel, runs, wait (gptjobs/sweeps.py)

Knows where the server and the key come from; the requests themselves are the resources'.
"""

from __future__ import annotations

import os
from types import TracebackType

from gptjobs.datasets import Datasets
from gptjobs.runs import Runs
from gptjobs.sweeps import Sweeps
from gptjobs.transport import Transport

DEFAULT_SERVER = "http://127.0.0.1:8000"


class Client:
    """A client of one gptjobs server.

    `server` defaults to $GPTJOBS_SERVER, else http://127.0.0.1:8000 (`gptjobs up`); `key` to
    $GPTJOBS_KEY (pass "" for none), sent as `Authorization: Bearer <key>` on every request
    and WebSocket. `timeout` is per request, in seconds (streams have no read timeout).
    Close it, or use it in a `with` block, to free its connections."""

    def __init__(self, server: str | None = None, key: str | None = None, *, timeout: float = 30.0):
        server = server or os.environ.get("GPTJOBS_SERVER") or DEFAULT_SERVER
        if key is None:
            key = os.environ.get("GPTJOBS_KEY")
        self._transport = Transport(server, key, timeout)
        self.runs = Runs(self._transport)
        self.datasets = Datasets(self._transport)
        self.sweeps = Sweeps(self._transport)

    @property
    def server(self) -> str:
        return self._transport.server

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"gptjobs.Client({self.server!r})"
