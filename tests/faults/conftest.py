"""Fault injection (issue 5, "Nothing lost"): real processes, each case its own stack.

A case starts redis-server (append-only, as `gptjobs up` runs it), the API
(`python -m api.cli serve`, the reaper inside it), Celery solo workers and SQLite in its
tmp dir, breaks one of them (SIGKILL, SIGSTOP, a restart), and checks what the database
and live subscribers hold afterwards. Each case records a row of the report that
`pytest_terminal_summary` prints (and writes as JSON to $GPTJOBS_FAULTS_REPORT, if set).
Every process a case started is killed when it ends, pass or fail (SIGCONT first).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from api.migrate import upgrade
from tests.helpers import ROOT, TINY, free_port, redis_argv, service_env, wait_for, worker_argv

Event = dict[str, Any]
FINAL = {"succeeded", "failed", "cancelled"}

# Short leases so that a lost worker is noticed in seconds (defaults: 30 s and 5 s).
FAST_LEASES = {"GPTJOBS_LEASE_TTL_S": "3", "GPTJOBS_REAPER_INTERVAL_S": "0.5", "GPTJOBS_IDLE_CHECK_S": "1"}


def is_final(ev: Event) -> bool:
    return ev["type"] == "status" and ev.get("status") in FINAL


# --- processes ------------------------------------------------------------------------------


class Proc:
    """A child process writing to its own log file (appended to across restarts)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name, self.argv, self.log = name, argv, log
        with open(log, "ab") as f:
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        assert self.alive(), f"{self.name} is not running:\n{self.tail()}"
        os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGKILL, grace: float = 15.0) -> int | None:
        """Send sig (after a SIGCONT, in case it is stopped) and wait; SIGKILL after grace."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, sig)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-n:])


class FaultStack:
    """redis-server, the API and training workers on loopback, each one restartable."""

    def __init__(self, root: Path):
        self.root = root
        self.logs = root / "logs"
        self.redis_dir = root / "redis"
        self.logs.mkdir()
        self.redis_dir.mkdir()
        self.redis_port, self.api_port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.ws_url = self.url.replace("http://", "ws://")
        self.db_path = root / "gptjobs.db"
        self.env = service_env(root, self.redis_url, f"sqlite:///{self.db_path}")
        self.env.update(FAST_LEASES)
        self.procs: list[Proc] = []
        self.redis_proc: Proc | None = None
        self.api_proc: Proc | None = None
        self.workers: list[Proc] = []
        self.subscribers: list[Subscriber] = []
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.r = redis.Redis(port=self.redis_port, socket_timeout=5)

    # --- starting and stopping the parts --------------------------------------------------
    def up(self, workers: int = 1) -> FaultStack:
        """Redis, migrations, the API and `workers` training workers, all ready."""
        self.start_redis()
        upgrade(f"sqlite:///{self.db_path}")
        self.start_api(wait=False)
        started = [self.start_worker(wait=False) for _ in range(workers)]
        self.wait_api()
        for w in started:
            self.wait_worker(w)
        return self

    def _start(self, name: str, argv: list[str]) -> Proc:
        p = Proc(name, argv, self.env, self.logs / f"{name}.log")
        self.procs.append(p)
        return p

    def start_redis(self) -> Proc:
        argv = redis_argv(self.redis_port, self.redis_dir, appendonly=True)
        self.redis_proc = p = self._start("redis", argv)
        wait_for(lambda: self._redis_up(p), 20, "redis-server")
        return p

    def _redis_up(self, p: Proc) -> bool:
        assert p.alive(), f"redis-server exited:\n{p.tail()}"
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    def restart_redis(self) -> float:
        """SIGTERM (redis writes its append-only file and exits), then the same argv again.
        Returns the seconds Redis was down."""
        assert self.redis_proc is not None
        t0 = time.monotonic()
        assert self.redis_proc.stop(signal.SIGTERM) == 0, self.redis_proc.tail()
        self.start_redis()
        return time.monotonic() - t0

    def start_api(self, wait: bool = True) -> Proc:
        argv = [sys.executable, "-m", "api.cli", "serve", "--port", str(self.api_port)]
        self.api_proc = p = self._start("api", argv)
        if wait:
            self.wait_api()
        return p

    def wait_api(self) -> None:
        def healthy() -> bool:
            assert self.api_proc is not None
            if not self.api_proc.alive():
                raise AssertionError(f"the API exited:\n{self.api_log()}")
            try:
                return self.http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, "the API")

    def api_log(self) -> str:
        return self.api_proc.tail() if self.api_proc else ""

    def start_worker(self, wait: bool = True) -> Proc:
        name = f"worker{len(self.workers) + 1}"
        p = self._start(name, worker_argv("train", name=name))
        self.workers.append(p)
        if wait:
            self.wait_worker(p)
        return p

    def wait_worker(self, p: Proc) -> None:
        def ready() -> bool:
            assert p.alive(), f"{p.name} exited:\n{p.tail()}"
            return " ready." in p.text()

        wait_for(ready, 90, p.name)

    def close(self, failed: bool) -> None:
        for s in self.subscribers:
            s.halt.set()
        for p in reversed(self.procs):
            p.stop(signal.SIGKILL, grace=10)
        self.http.close()
        self.r.close()
        if failed:  # shown under "Captured stdout teardown"
            for p in self.procs:
                print(f"----- {p.log.name} (pid {p.pid}, exit {p.popen.returncode}) -----\n{p.tail(80)}")

    # --- the API ----------------------------------------------------------------------------
    def submit(self, config: dict[str, Any], **fields: Any) -> str:
        resp = self.http.post("/runs", json={"config": {**TINY, **config}, **fields})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    def run(self, run_id: str) -> dict[str, Any]:
        resp = self.http.get(f"/runs/{run_id}")
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def wait_status(self, run_id: str, statuses: set[str], timeout: float = 120) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["status"] in statuses else None

        try:
            return wait_for(reached, timeout, f"run {run_id} to be {sorted(statuses)}", 0.1)
        except TimeoutError as e:
            raise AssertionError(f"{e}; it is {self.run(run_id)}") from None

    def events(self, run_id: str) -> list[Event]:
        """The run's history, as GET /events pages it (superseded events left out)."""
        out: list[Event] = []
        after = 0
        while True:
            page = self.http.get(f"/runs/{run_id}/events", params={"after": after, "limit": 1000}).json()
            out += page["events"]
            after = page["next_after"]
            if not page["has_more"]:
                return out

    # --- straight from the stores, for what the API does not show ----------------------------
    def db_events(self, run_id: str) -> list[tuple[Event, bool]]:
        """Every event row of the run, superseded or not: (event, superseded)."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10) as c:
            rows = c.execute("SELECT body, superseded FROM events WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
        return [(json.loads(body), bool(sup)) for body, sup in rows]

    def db_max_iter(self, run_id: str) -> int:
        """The newest iteration whose iter event the database holds (-1: none yet)."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10) as c:
            q = "SELECT max(iter) FROM events WHERE run_id = ? AND type = 'iter'"
            newest = c.execute(q, (run_id,)).fetchone()[0]
        return -1 if newest is None else int(newest)

    def stream_events(self, run_id: str) -> list[Event]:
        entries: Any = self.r.xrange(f"run:{run_id}:events")
        return [json.loads(fields[b"e"]) for _id, fields in entries]

    def newest(self, run_id: str) -> Event | None:
        """The newest event on the run's Redis stream (ahead of the database's batched writes)."""
        got: Any = self.r.xrevrange(f"run:{run_id}:events", count=1)
        return json.loads(got[0][1][b"e"]) if got else None

    def wait_iter(self, run_id: str, at_least: int, timeout: float = 60) -> Event:
        """Until the stream's newest event is at iteration at_least or later."""

        def there() -> Event | None:
            ev = self.newest(run_id)
            return ev if ev is not None and (ev.get("iter") or 0) >= at_least else None

        return wait_for(there, timeout, f"run {run_id} at iter {at_least}", 0.01)

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id


# --- a careful live client ----------------------------------------------------------------


class Subscriber(threading.Thread):
    """A WebSocket client that follows a run to its end, and after any drop reconnects with
    ?after=<last seq seen>, retrying while the API is down. It keeps everything it got."""

    def __init__(self, ws_url: str, run_id: str, timeout: float = 240):
        super().__init__(daemon=True, name=f"subscriber {run_id}")
        self.url = f"{ws_url}/runs/{run_id}/stream"
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
        while not self.halt.is_set() and time.monotonic() < self.deadline:
            try:
                with connect(f"{self.url}?after={self.last}", open_timeout=3, close_timeout=1) as ws:
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


def follow(stack: FaultStack, run_id: str, n: int = 1) -> list[Subscriber]:
    subs = [Subscriber(stack.ws_url, run_id) for _ in range(n)]
    stack.subscribers += subs
    for s in subs:
        s.start()
    wait_for(lambda: all(s.connects for s in subs), 30, "the subscribers to connect")
    return subs


# --- what is lost, what is doubled ----------------------------------------------------------


@dataclass
class Tally:
    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, lost: int, duplicated: int, what: str) -> None:
        self.lost += lost
        self.duplicated += duplicated
        if lost or duplicated:
            self.problems.append(f"{what}: {lost} lost, {duplicated} duplicated")


def check_history(events: list[Event], max_iters: int, tally: Tally) -> None:
    """One consistent timeline: seq strictly increasing, every iteration once, one final
    status at the end."""
    seqs = [e["seq"] for e in events]
    dup_seq = len(seqs) - len(set(seqs))
    tally.add(0, dup_seq, "history seqs")
    if seqs != sorted(set(seqs)):
        tally.problems.append("history seqs not strictly increasing")
    iters = Counter(e["iter"] for e in events if e["type"] == "iter")
    missing = [i for i in range(max_iters) if i not in iters]
    tally.add(len(missing), sum(n - 1 for n in iters.values()), f"history iters (missing {missing[:10]})")
    extra = sorted(set(iters) - set(range(max_iters)))
    if extra:
        tally.problems.append(f"history iters outside 0..{max_iters - 1}: {extra[:10]}")
    finals = [e for e in events if is_final(e)]
    if len(finals) != 1 or events[-1] is not finals[0]:
        tally.problems.append(f"expected one final status, last: {finals}")
    for e in events:
        if not {"run_id", "seq", "attempt", "type", "ts"} <= e.keys():
            tally.problems.append(f"event lacks common fields: {e}")
            break


def superseded_by(history: list[Event]) -> Any:
    """A predicate: was this event of a lost attempt superseded by a later attempt's resume?
    (iter-carrying events past the resume point, which history leaves out.)"""
    resumes = [
        (e["attempt"], e.get("from_iter"))
        for e in history
        if e["type"] == "status" and e["status"] == "running" and e["attempt"] > 1
    ]

    def superseded(ev: Event) -> bool:
        if ev["type"] == "status" or not isinstance(ev.get("iter"), int):
            return False
        # A checkpoint's iter is the next step to run: the resumed attempt reports the step
        # at from_iter again (its eval and checkpoint it does not).
        first_again = 0 if ev["type"] == "iter" else 1
        return any(a > ev["attempt"] and (f is None or ev["iter"] >= f + first_again) for a, f in resumes)

    return superseded


def check_subscribers(subs: list[Subscriber], history: list[Event], tally: Tally) -> None:
    """Each subscriber got every seq of the history once (the same event), then the final
    status. What one got live that history lacks must have been superseded: anything else
    counts as lost (a killed worker's unflushed batch is saved by the reaper from the stream)."""
    by_seq = {e["seq"]: e for e in history}
    superseded = superseded_by(history)
    for i, s in enumerate(subs):
        got = Counter(e["seq"] for e in s.got)
        lost = [q for q in by_seq if q not in got]
        tally.add(len(lost), sum(n - 1 for n in got.values()), f"subscriber {i} (lost {lost[:10]})")
        changed = [e["seq"] for e in s.got if e["seq"] in by_seq and e != by_seq[e["seq"]]]
        if changed:
            tally.problems.append(f"subscriber {i}: events differ from history at seqs {changed[:10]}")
        live_only = [e for e in s.got if e["seq"] not in by_seq and not superseded(e)]
        tally.lost += len(live_only)
        if live_only:
            tally.problems.append(f"subscriber {i} got events history lacks: {[e['seq'] for e in live_only][:10]}")
        if not s.closed_normally:
            tally.problems.append(f"subscriber {i} did not end with the final status and a 1000 close: {s.drops[-3:]}")


# --- runs ---------------------------------------------------------------------------------


def run_config(max_iters: int, eval_interval: int, **over: Any) -> dict[str, Any]:
    """A run that checkpoints at every eval (so there is always one to resume from)."""
    return {
        "max_iters": max_iters,
        "lr_decay_iters": max_iters,
        "warmup_iters": 10,
        "eval_interval": eval_interval,
        "always_save_checkpoint": True,
        **over,
    }


def statuses(events: list[Event]) -> list[str]:
    return [e["status"] for e in events if e["type"] == "status"]


def finish(
    stack: FaultStack, run_id: str, subs: list[Subscriber], row: Row, max_iters: int
) -> tuple[dict[str, Any], list[Event]]:
    """Wait for the end; then tally history and subscribers into the row."""
    done = stack.wait_status(run_id, FINAL, timeout=120)
    for s in subs:
        s.finish()
    history = stack.events(run_id)
    tally = Tally()
    check_history(history, max_iters, tally)
    check_subscribers(subs, history, tally)
    row.tally(tally)
    row.recovered = "yes" if done["status"] == "succeeded" else f"no ({done['status']}: {done['reason']})"
    assert done["status"] == "succeeded", done
    assert not tally.problems, tally.problems
    return done, history


# --- the report -----------------------------------------------------------------------------


@dataclass
class Row:
    fault: str = ""
    recovered: str = "no"  # "yes", "no", or what happened instead
    recover_s: float | None = None  # from the fault to the run's first progress after it
    lost: int | None = None
    duplicated: int | None = None
    note: str = ""
    case: str = ""
    outcome: str = ""
    wall_s: float = 0.0

    def tally(self, t: Tally) -> None:
        self.lost, self.duplicated = t.lost, t.duplicated


ROWS = pytest.StashKey[list[Row]]()
OUTCOME = pytest.StashKey[str]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if rep.when == "call" or (rep.when == "setup" and rep.failed):
        item.stash[OUTCOME] = rep.outcome
    return rep


@pytest.fixture
def row(request: pytest.FixtureRequest) -> Iterator[Row]:
    r = Row(case=request.node.name)
    t0 = time.monotonic()
    yield r
    r.wall_s = round(time.monotonic() - t0, 1)
    r.outcome = request.node.stash.get(OUTCOME, "error")
    request.config.stash.setdefault(ROWS, []).append(r)


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultStack]:
    s = FaultStack(tmp_path)
    try:
        yield s
    finally:
        s.close(failed=request.node.stash.get(OUTCOME, "failed") != "passed")


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def report_lines(rows: list[Row]) -> list[str]:
    head = ["fault", "recovered", "s to recover", "events lost", "events duplicated", "test", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r.fault, r.recovered, r.recover_s, r.lost, r.duplicated, r.outcome, r.wall_s]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows: list[Row] = config.stash.get(ROWS, [])
    if not rows:
        return
    rows = sorted(rows, key=lambda r: r.fault)  # by case number
    terminalreporter.section("fault injection (issue 5)")
    for line in report_lines(rows):
        terminalreporter.write_line(line)
    for r in rows:
        if r.note:
            terminalreporter.write_line(f"  {r.fault}: {r.note}")
    if path := os.environ.get("GPTJOBS_FAULTS_REPORT"):
        Path(path).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
        terminalreporter.write_line(f"written to {path}")
