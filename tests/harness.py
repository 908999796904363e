"""The service's real parts as child processes on loopback, for the integration, fault and
browser tests and for the benchmarks (bench/ imports this module too).

- `Proc`: one child process with its own log file (appended to across restarts); stopped
  with any signal, restarted with the same command line, frozen (SIGSTOP) and thawed.
- `Stack`: redis-server + a migrated database (SQLite in its directory, or a given URL) +
  the API + Celery workers on given queues, each a Proc. Its waits fail at once, with the
  log's tail, when one of its processes dies. Plus what the tests do through the API:
  submit a run, read it, wait for a status, page its events, read its WebSocket once
  (`stream`) or follow it across drops (`follow`, a `Subscriber` thread each).
- `redis_server()`, `postgres_server()`: a throwaway server alone; `app_client()`: the app
  in this process (FastAPI's TestClient) on a fresh SQLite database.

The command lines come from api.cli, the functions `gptjobs up` builds its own with, so the
tests run the processes a user runs. Knows nothing of pytest: fixtures are the conftests'.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import redis

from api.cli import free_port, gptjobs_argv, redis_argv, serve_argv, worker_argv
from tests.configs import NANOGPT_CPU, TINY

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

__all__ = [
    "FINAL",
    "NANOGPT_CPU",
    "ROOT",
    "TINY",
    "Event",
    "Proc",
    "Stack",
    "Subscriber",
    "app_client",
    "free_port",
    "gptjobs",
    "is_final",
    "pg_bin",
    "postgres_server",
    "rank_pids",
    "redis_server",
    "s3_server",
    "service_env",
    "stop",
    "wait_for",
]

ROOT = Path(__file__).resolve().parent.parent
Event = dict[str, Any]
FINAL = frozenset({"succeeded", "failed", "cancelled", "pruned"})
T = TypeVar("T")


def is_final(ev: Event) -> bool:
    return ev["type"] == "status" and ev.get("status") in FINAL


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Until check() is truthy; returns it. A TimeoutError naming `what` after timeout s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(p: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 10.0) -> int:
    """Send sig (after a SIGCONT, in case it is frozen), wait; SIGKILL after grace s."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGCONT)
            os.kill(p.pid, sig)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


def gptjobs(env: Mapping[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A `gptjobs` command run to its end, its output captured."""
    return subprocess.run(gptjobs_argv(*args), cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout)


def service_env(data_dir: Path, redis_url: str, db_url: str, **extra: str) -> dict[str, str]:
    """The environment gptjobs' processes read (as `gptjobs up` hands its children)."""
    return {
        **os.environ,
        "GPTJOBS_DATA_DIR": str(data_dir),
        "GPTJOBS_REDIS_URL": redis_url,
        "GPTJOBS_DATABASE_URL": db_url,
        "GPTJOBS_TORCH_THREADS": "1",  # two torch threads beside other busy processes: 50x slower steps here
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **extra,
    }


# --- processes ------------------------------------------------------------------------------


class Proc:
    """A child process writing to its own log file (appended to across restarts)."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, dict(env), log
        self.popen: subprocess.Popen[bytes] | None = None
        self.wanted = False  # started and not stopped on purpose: its exit is a failure
        self.start()

    def start(self) -> Proc:
        assert not self.alive(), f"{self.name} is already running"
        with open(self.log, "ab") as f:
            self.popen = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        self.wanted = True
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def send(self, sig: int) -> None:
        assert self.alive(), f"{self.name} is not running:\n{self.tail()}"
        os.kill(self.pid, sig)

    def freeze(self) -> None:
        self.send(signal.SIGSTOP)

    def thaw(self) -> None:
        self.send(signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> int | None:
        """Send sig (SIGCONT first, in case it is frozen) and wait; SIGKILL after grace s."""
        self.wanted = False
        return stop(self.popen, sig, grace) if self.popen else None

    def restart(self, sig: int = signal.SIGTERM) -> Proc:
        """Stop with sig, then the same command line again, logging to the same file."""
        self.stop(sig)
        return self.start()

    def check(self) -> None:
        """Fails, with the log's tail, if the process exited without being asked to."""
        if self.wanted and not self.alive():
            raise AssertionError(f"{self.name} exited with code {self.returncode}:\n{self.tail()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def wait_log(self, needle: str, timeout: float = 90) -> None:
        """Until the log holds needle (a worker's " ready."); fails at once if it exits."""

        def there() -> bool:
            self.check()
            return needle in self.text()

        wait_for(there, timeout, f"{self.name} to log {needle.strip()!r}")

    def ranks(self) -> dict[int, int]:
        """The ranks this worker's launcher runs now: {global rank: pid}."""
        return rank_pids(self.pid) if self.alive() else {}

    def cpu_s(self) -> float:
        """User + system CPU seconds so far: a cost that contention on a shared machine cannot inflate."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rank_pids(parent: int) -> dict[int, int]:
    """The `python -m worker.rank` children of a worker process: {global rank: pid}."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            if b"worker.rank" not in (d / "cmdline").read_bytes():
                continue
            env = dict(kv.split(b"=", 1) for kv in (d / "environ").read_bytes().split(b"\0") if b"=" in kv)
            found[int(env[b"RANK"])] = int(d.name)
        except (OSError, KeyError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


# --- the whole service ----------------------------------------------------------------------


class Stack:
    """redis-server, a migrated database, the API and Celery workers, under one data dir.

    Start the parts with `up()` (or one at a time), stop them with `close()` (also on leaving
    a `with` block). `env` adds settings for every process (GPTJOBS_...); `database_url`
    replaces the SQLite file in root; `appendonly` runs Redis as `gptjobs up` does, so that
    its queue survives `restart_redis()`.
    """

    def __init__(
        self,
        root: Path,
        *,
        env: Mapping[str, str] | None = None,
        database_url: str | None = None,
        appendonly: bool = False,
    ) -> None:
        self.root = self.data_dir = root
        self.logs = root / "logs"
        self.redis_dir = root / "redis"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_dir.mkdir(exist_ok=True)
        self.appendonly = appendonly
        self.redis_port, self.api_port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.db_path = root / "gptjobs.db"
        self.database_url = database_url or f"sqlite:///{self.db_path}"
        self.env = service_env(root, self.redis_url, self.database_url, **{**test_store_env(root), **(env or {})})
        self.key: str | None = None  # the API key self.http sends, once `create_key(..., use=True)`
        self.procs: list[Proc] = []
        self.redis_proc: Proc | None = None
        self.api_proc: Proc | None = None
        self.workers: list[Proc] = []
        self.subscribers: list[Subscriber] = []
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.r = redis.Redis(port=self.redis_port, socket_timeout=5)

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://")

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- starting and stopping the parts --------------------------------------------------
    def up(self, train: int = 1, sample: int = 0, prepare: int = 0, *, key: str | None = None) -> Stack:
        """Redis, the migrations, the API and `train` + `sample` + `prepare` workers, all ready. key: an
        API key made for that owner before the API starts (so the server is closed), which
        self.http and the sockets then send."""
        self.start_redis()
        self.migrate()
        if key:
            self.create_key(key, use=True)
        self.start_api(wait=False)
        queues = ["train"] * train + ["sample"] * sample + ["prepare"] * prepare
        started = [self.start_worker(q, wait=False) for q in queues]
        self.wait_api()
        for w in started:
            self.wait_worker(w)
        return self

    def start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Proc:
        """Any process beside the stack's, with its environment (and env over it), logging to
        logs/NAME.log."""
        p = Proc(name, argv, {**self.env, **(env or {})}, self.logs / f"{name}.log")
        self.procs.append(p)
        return p

    def check(self) -> None:
        """Fails, with its log's tail, if any process of the stack exited unasked."""
        for p in self.procs:
            p.check()

    def migrate(self) -> None:
        from api.migrate import upgrade

        upgrade(self.database_url)

    def start_redis(self) -> Proc:
        if self.redis_proc is None:
            self.redis_proc = self.start(
                "redis", redis_argv(self.redis_port, self.redis_dir, appendonly=self.appendonly)
            )
        else:
            self.redis_proc.start()
        self.wait_redis()
        return self.redis_proc

    def wait_redis(self) -> None:
        def up() -> bool:
            self.check()
            try:
                return bool(self.r.ping())
            except redis.RedisError:
                return False

        wait_for(up, 20, "redis-server")

    def restart_redis(self) -> float:
        """SIGTERM (redis writes its append-only file and exits), then the same command line
        again. Returns the seconds Redis was down."""
        assert self.redis_proc is not None
        t0 = time.monotonic()
        assert self.redis_proc.stop(signal.SIGTERM) == 0, self.redis_proc.tail()
        self.start_redis()
        return time.monotonic() - t0

    def start_api(self, wait: bool = True, argv: list[str] | None = None) -> Proc:
        """`gptjobs serve` on self.api_port; argv: another command line serving that port
        (plain uvicorn, say). A second call starts the same process again."""
        if self.api_proc is None:
            self.api_proc = self.start("api", argv or serve_argv("127.0.0.1", self.api_port))
        else:
            self.api_proc.start()
        if wait:
            self.wait_api()
        return self.api_proc

    def wait_api(self, timeout: float = 60) -> None:
        """Until GET /healthz answers 200 (the database and Redis reachable)."""

        def healthy() -> bool:
            self.check()
            try:
                return self.http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout, "the API")

    def api_log(self) -> str:
        return self.api_proc.tail() if self.api_proc else ""

    def start_worker(
        self, queue: str = "train", wait: bool = True, *, nproc: int | None = None, env: Mapping[str, str] | None = None
    ) -> Proc:
        """A Celery worker on queue; logs/train.log for the first, train2.log, ... after it.
        nproc: a training worker owning that many CPU ranks (`gptjobs worker --nproc N`).
        env: settings of its own over the stack's (a data directory no other process shares)."""
        n = sum(w.name.rstrip("0123456789") == queue for w in self.workers) + 1
        name = queue if n == 1 else f"{queue}{n}"
        p = self.start(name, worker_argv(queue, name=f"{name}@test", nproc=nproc), env)
        self.workers.append(p)
        if wait:
            self.wait_worker(p)
        return p

    def wait_worker(self, p: Proc, timeout: float = 90) -> None:
        self.check()
        p.wait_log(" ready.", timeout)

    def close(self, sig: int = signal.SIGTERM, *, dump_logs: bool = False) -> None:
        """Stop every process, newest first (Redis, which the others need, last)."""
        for s in self.subscribers:
            s.halt.set()
        for p in reversed(self.procs):
            p.stop(sig, grace=10)
        self.http.close()
        self.r.close()
        if dump_logs:  # pytest shows it under "Captured stdout teardown"
            for p in self.procs:
                print(f"----- {p.log.name} (pid {p.pid}, exit {p.returncode}) -----\n{p.tail(80)}")

    def log_tail(self, name: str, n: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    # --- keys -----------------------------------------------------------------------------
    def create_key(self, name: str, *, use: bool = False) -> str:
        """An API key for owner `name`, written to the database (migrated first); with use,
        self.http and the sockets send it from now on."""
        from api.auth import create_key
        from api.db import Database

        db = Database(self.database_url)
        try:
            _, key = create_key(db, name)
        finally:
            db.dispose()
        if use:
            self.key = key
            self.http.headers["Authorization"] = f"Bearer {key}"
        return key

    def _ws_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    # --- the API ----------------------------------------------------------------------------
    def submit(
        self, config: Mapping[str, Any] | None = None, *, base: Mapping[str, Any] = TINY, **fields: Any
    ) -> dict[str, Any]:
        """POST /runs with config's keys over base's (and body fields: name, max_restarts);
        returns the created run."""
        resp = self.http.post("/runs", json={"config": {**base, **(config or {})}, **fields})
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def run(self, run_id: str) -> dict[str, Any]:
        resp = self.http.get(f"/runs/{run_id}")
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def wait_status(
        self, run_id: str, statuses: set[str] | frozenset[str], timeout: float = 120, every: float = 0.1
    ) -> dict[str, Any]:
        """Until the run's status is one of statuses, asking every `every` s; returns the run."""

        def reached() -> dict[str, Any] | None:
            self.check()
            run = self.run(run_id)
            return run if run["status"] in statuses else None

        try:
            return wait_for(reached, timeout, f"run {run_id} to be {sorted(statuses)}", every)
        except TimeoutError as e:
            raise AssertionError(f"{e}; it is {self.run(run_id)}") from None

    def events(self, run_id: str, **params: Any) -> list[Event]:
        """The run's history through GET /events, page by page (superseded events left out)."""
        out: list[Event] = []
        after = params.pop("after", 0)
        while True:
            resp = self.http.get(f"/runs/{run_id}/events", params={"after": after, **params})
            assert resp.status_code == 200, resp.text
            page = resp.json()
            out += page["events"]
            after = page["next_after"]
            if not page["has_more"]:
                return out

    def stream(
        self, run_id: str, after: int = 0, *, stop_after: int | None = None, timeout: float = 90
    ) -> tuple[list[Event], int | None]:
        """Events from one WebSocket connection, and its close code (None when we left first)."""
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        got: list[Event] = []
        url = f"{self.ws}/runs/{run_id}/stream?after={after}"
        with connect(url, additional_headers=self._ws_headers(), open_timeout=10) as ws:
            deadline = time.monotonic() + timeout
            try:
                while stop_after is None or len(got) < stop_after:
                    got.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
            except ConnectionClosed as e:
                return got, e.rcvd.code if e.rcvd else None
        return got, None

    def follow(self, run_id: str, n: int = 1, timeout: float = 240) -> list[Subscriber]:
        """n Subscribers following the run to its end, each connected before this returns."""
        subs = [Subscriber(self.ws, run_id, self._ws_headers(), timeout) for _ in range(n)]
        self.subscribers += subs
        for s in subs:
            s.start()
        wait_for(lambda: all(s.connects for s in subs), 30, "the subscribers to connect")
        return subs

    # --- straight from the stores, for what the API does not show ----------------------------
    def db_events(self, run_id: str) -> list[tuple[Event, bool]]:
        """Every event row of the run, superseded or not: (event, superseded). SQLite only."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10) as c:
            rows = c.execute("SELECT body, superseded FROM events WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
        return [(json.loads(body), bool(sup)) for body, sup in rows]

    def db_max_iter(self, run_id: str) -> int:
        """The newest iteration whose iter event the database holds (-1: none yet). SQLite only."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10) as c:
            q = "SELECT max(iter) FROM events WHERE run_id = ? AND type = 'iter'"
            newest = c.execute(q, (run_id,)).fetchone()[0]
        return -1 if newest is None else int(newest)

    def stream_events(self, run_id: str) -> list[Event]:
        """The run's Redis stream, oldest first."""
        entries: Any = self.r.xrange(f"run:{run_id}:events")
        return [json.loads(fields[b"e"]) for _id, fields in entries]

    def newest(self, run_id: str) -> Event | None:
        """The newest event on the run's Redis stream (ahead of the database's batched writes)."""
        got: Any = self.r.xrevrange(f"run:{run_id}:events", count=1)
        return json.loads(got[0][1][b"e"]) if got else None

    def wait_iter(self, run_id: str, at_least: int, timeout: float = 60) -> Event:
        """Until the stream's newest event is at iteration at_least or later."""

        def there() -> Event | None:
            self.check()
            ev = self.newest(run_id)
            return ev if ev is not None and (ev.get("iter") or 0) >= at_least else None

        return wait_for(there, timeout, f"run {run_id} at iter {at_least}", 0.01)

    def run_dir(self, run_id: str) -> Path:
        """A run's folder where the artifacts are a directory (see `store` for either kind)."""
        return self.root / "runs" / run_id

    @property
    def store(self) -> Any:
        """The stack's artifact store (gpt.store.Store), as its processes see it."""
        from gpt.store import Store

        return Store(self.env.get("GPTJOBS_ARTIFACTS_URL") or self.data_dir)

    def artifacts(self, prefix: str) -> list[str]:
        """Every key under prefix in the stack's store (hidden temp files included), sorted."""
        store = self.store
        if store.is_local:
            base = store.local_path(prefix)
            return sorted(str(f.relative_to(store.root)) for f in base.rglob("*") if f.is_file())
        root = store.where().removeprefix("s3://").rstrip("/") + "/"
        return sorted(k.removeprefix(root) for k in store.fs.find(store.where(prefix)))

    def checkpoint(self, run_id: str, name: str = "ckpt.pt") -> dict[str, Any]:
        """A run's checkpoint as torch loads it, from whichever store the stack has."""
        import io

        import torch

        data = self.store.read_bytes(f"runs/{run_id}/{name}")
        return dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


# --- a careful live client ----------------------------------------------------------------


class Subscriber(threading.Thread):
    """A WebSocket client that follows a run to its end, and after any drop reconnects with
    ?after=<last seq seen>, retrying while the API is down. It keeps everything it got."""

    def __init__(self, ws_url: str, run_id: str, headers: Mapping[str, str] | None = None, timeout: float = 240):
        super().__init__(daemon=True, name=f"subscriber {run_id}")
        self.url = f"{ws_url}/runs/{run_id}/stream"
        self.headers = dict(headers or {})
        self.arrivals: list[tuple[float, Event]] = []  # (time.time() on arrival, event)
        self.connects = 0
        self.drops: list[str] = []
        self.closed_normally = False
        self.deadline = time.monotonic() + timeout
        self.halt = threading.Event()

    @property
    def got(self) -> list[Event]:
        return [ev for _, ev in self.arrivals]

    @property
    def last(self) -> int:
        return self.arrivals[-1][1]["seq"] if self.arrivals else 0

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed, WebSocketException
        from websockets.sync.client import connect

        while not self.halt.is_set() and time.monotonic() < self.deadline:
            try:
                url = f"{self.url}?after={self.last}"
                with connect(url, additional_headers=self.headers, open_timeout=3, close_timeout=1) as ws:
                    self.connects += 1
                    while not self.halt.is_set():
                        try:
                            msg = ws.recv(timeout=0.5)
                        except TimeoutError:
                            continue
                        self.arrivals.append((time.time(), json.loads(msg)))
            except ConnectionClosed as e:
                if e.rcvd is not None and e.rcvd.code == 1000 and self.arrivals and is_final(self.arrivals[-1][1]):
                    self.closed_normally = True
                    return
                self.drops.append(f"closed: {e}")
            except (OSError, TimeoutError, WebSocketException) as e:
                self.drops.append(repr(e))
            time.sleep(0.2)

    def finish(self, timeout: float = 60) -> None:
        self.join(timeout)
        self.halt.set()
        self.join(5)

    def live_since(self, t: float) -> float | None:
        """When the first event the worker stamped at t or later arrived (None: not yet)."""
        return next((at for at, ev in list(self.arrivals) if ev["ts"] >= t), None)


# --- one server alone -----------------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gptjobs-redis-") as d:
        p = Proc("redis", redis_argv(port, d, appendonly=False), os.environ, Path(d) / "redis.log")
        r = redis.Redis(port=port)
        try:

            def up() -> bool:
                p.check()
                try:
                    return bool(r.ping())
                except redis.RedisError:
                    return False

            wait_for(up, 15, "redis-server")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            r.close()
            p.stop()


S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_server(bucket: str = "gptjobs") -> Iterator[dict[str, str]]:
    """moto's S3 server (a stand-in for S3: the real MinIO or S3 cannot run here) on a free
    loopback port, with one bucket; yields the environment that points boto and s3fs at it."""
    import sys

    port = free_port()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    argv = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    with tempfile.TemporaryDirectory(prefix="gptjobs-s3-") as d:
        p = Proc("moto-s3", argv, {**os.environ, **env}, Path(d) / "moto.log")
        try:

            def up() -> bool:
                p.check()
                try:
                    return httpx.put(f"{env['AWS_ENDPOINT_URL']}/{bucket}", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(up, 30, "moto's S3 server")
            yield env
        finally:
            p.stop()
            # fsspec keeps a filesystem per set of arguments, and s3fs read the endpoint from
            # the environment when it made this one: the next server is elsewhere.
            from s3fs import S3FileSystem

            S3FileSystem.clear_instance_cache()


# The store the suites' stacks keep artifacts in: GPTJOBS_TEST_STORE=directory (the default,
# under each stack's data dir) or s3 (a prefix of its own per stack, on one moto server for
# the whole session, started by the first stack that needs it). `make test` runs the
# integration and fault suites in both.
TEST_STORE = os.environ.get("GPTJOBS_TEST_STORE", "directory")
_session_s3: contextlib.ExitStack | None = None


def test_store_env(root: Path) -> dict[str, str]:
    """The settings that put a stack's artifacts in the test store (none for a directory)."""
    global _session_s3
    if TEST_STORE == "directory":
        return {}
    if TEST_STORE != "s3":
        raise SystemExit(f"GPTJOBS_TEST_STORE={TEST_STORE!r}: use directory or s3")
    if _session_s3 is None:
        import atexit

        _session_s3 = contextlib.ExitStack()
        # This process reads what the stacks write (Stack.store), and every child inherits it.
        os.environ.update(_session_s3.enter_context(s3_server()))
        atexit.register(_session_s3.close)
    return s3_settings(f"s3://gptjobs/{root.name}-{os.urandom(4).hex()}")


S3_PART_BYTES = 5 * 2**20  # S3's smallest part: a checkpoint of a few MB goes up in several


def s3_settings(url: str) -> dict[str, str]:
    """The settings that put a service's artifacts at url on the test S3 server."""
    return {"GPTJOBS_ARTIFACTS_URL": url, "GPTJOBS_STORE_PART_BYTES": str(S3_PART_BYTES)}


def open_uploads(store: Any, key: str = "") -> list[dict[str, Any]]:
    """The multipart uploads begun and neither completed nor aborted under key of an S3
    store (gpt.store.Store): the objects still being written, invisible until completed."""
    bucket, _, prefix = store.where(key).removeprefix("s3://").partition("/")
    found = store.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
    return list(found.get("Uploads", []))


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster in a temp dir (as user postgres when we are root)."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    assert initdb and pg_ctl
    port = free_port()
    d = tempfile.mkdtemp(prefix="gptjobs-pg-")
    data, sock = os.path.join(d, "data"), os.path.join(d, "sock")
    os.makedirs(sock)
    as_root = os.geteuid() == 0
    if as_root:  # PostgreSQL refuses to run as root
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chmod(d, 0o755)
        for path in (d, sock):
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def run(argv: list[str]) -> None:
        if as_root:
            argv = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{a}'" for a in argv)]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120)

    try:
        run([initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"])
        opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        run([pg_ctl, "-D", data, "-o", opts, "-w", "-t", "60", "-l", os.path.join(d, "log"), "start"])
        try:
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
        finally:
            run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def app_client(
    data_dir: Path, redis_url: str | None = None, *, clock: Callable[[], float] = time.time, **settings: Any
) -> Iterator[TestClient]:
    """The app in this process (FastAPI's TestClient, its lifespan run) on a migrated SQLite
    database in data_dir. Without redis_url: a port nothing listens on, so Redis is down.
    `clock` is the wall clock its per-minute limits count by."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.migrate import upgrade
    from api.settings import Settings

    url = redis_url or f"redis://127.0.0.1:{free_port()}/0"
    s = Settings(data_dir=data_dir, redis_url=url, **settings)
    upgrade(s.db_url)
    with TestClient(create_app(s, clock=clock)) as client:
        yield client
