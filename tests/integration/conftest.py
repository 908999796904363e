"""The real parts on loopback: a redis-server process, a Celery worker process (solo pool),
uvicorn serving api.main:app, SQLite in a temp data dir. Started once per session."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from api.migrate import upgrade
from tests.helpers import ROOT, TINY, free_port, redis_server, service_env, stop, wait_for, wait_healthy, worker_argv


@dataclass
class Stack:
    url: str
    data_dir: Path
    redis_url: str
    logs: Path
    http: httpx.Client
    env: dict[str, str]  # what the services were started with, for more of them

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://")

    def submit(self, **config: Any) -> dict[str, Any]:
        resp = self.http.post("/runs", json={"config": {**TINY, **config}})
        assert resp.status_code == 201, resp.text
        return resp.json()

    def run(self, run_id: str) -> dict[str, Any]:
        resp = self.http.get(f"/runs/{run_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait_status(self, run_id: str, statuses: set[str], timeout: float = 90) -> dict[str, Any]:
        return wait_for(
            lambda: (r := self.run(run_id))["status"] in statuses and r, timeout, f"run {run_id} to be {statuses}", 0.1
        )

    def events(self, run_id: str, **params: Any) -> list[dict[str, Any]]:
        """All events through GET /events, page by page."""
        out: list[dict[str, Any]] = []
        after = params.pop("after", 0)
        while True:
            page = self.http.get(f"/runs/{run_id}/events", params={"after": after, **params}).json()
            out += page["events"]
            after = page["next_after"]
            if not page["has_more"]:
                return out

    def stream(
        self, run_id: str, after: int = 0, *, stop_after: int | None = None, timeout: float = 90
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Events from the WebSocket, and the close code (None when we left first)."""
        got: list[dict[str, Any]] = []
        with connect(f"{self.ws}/runs/{run_id}/stream?after={after}", open_timeout=10) as ws:
            deadline = time.monotonic() + timeout
            try:
                while stop_after is None or len(got) < stop_after:
                    got.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
            except ConnectionClosed as e:
                return got, e.rcvd.code if e.rcvd else None
        return got, None

    def log_tail(self, name: str, n: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("gptjobs-data")
    logs = data_dir / "logs"
    logs.mkdir()
    with redis_server() as redis_url:
        db_url = f"sqlite:///{data_dir / 'gptjobs.db'}"
        upgrade(db_url)
        env = service_env(data_dir, redis_url, db_url)
        env["GPTJOBS_IDLE_CHECK_S"] = "1"
        port = free_port()
        procs = []
        try:
            with open(logs / "train.log", "wb") as f:
                procs.append(subprocess.Popen(worker_argv("train"), cwd=ROOT, env=env, stdout=f, stderr=f))
            with open(logs / "api.log", "wb") as f:
                argv = [sys.executable, "-m", "api.cli", "serve", "--port", str(port)]
                procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=f))
            url = f"http://127.0.0.1:{port}"
            http = httpx.Client(base_url=url, timeout=30)

            wait_healthy(url, procs)
            wait_for(lambda: b" ready." in (logs / "train.log").read_bytes(), 60, "the train worker")
            yield Stack(url, data_dir, redis_url, logs, http, env)
            http.close()
        finally:
            for p in reversed(procs):
                stop(p)


@pytest.fixture(scope="session")
def sample_worker(stack: Stack) -> Iterator[None]:
    """A Celery worker on the `sample` queue, beside the stack's training worker."""
    with open(stack.logs / "sample.log", "wb") as f:
        p = subprocess.Popen(worker_argv("sample"), cwd=ROOT, env=stack.env, stdout=f, stderr=f)
    try:
        wait_for(lambda: b" ready." in (stack.logs / "sample.log").read_bytes(), 60, "the sample worker")
        yield
    finally:
        stop(p)
