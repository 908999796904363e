"""Fault injection: real processes, each case its own stack (tests/harness.py's Stack).

A case starts redis-server (append-only, as `gptjobs up` runs it), the API
(`gptjobs serve`, the reaper inside it), Celery solo workers and SQLite in its tmp dir,
breaks one of them (SIGKILL, SIGSTOP, a restart), and checks what the database and live
subscribers hold afterwards. Each case records a row of the report that
`pytest_terminal_summary` prints (and writes as JSON to $GPTJOBS_FAULTS_REPORT, if set).
Every process a case started is killed when it ends, pass or fail (SIGCONT first), and on a
failure every log's tail is printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FINAL, Event, Stack, Subscriber, is_final, s3_server, s3_settings

__all__ = ["FINAL", "Event", "Stack", "Subscriber", "is_final"]

# Short leases so that a lost worker is noticed in seconds (defaults: 30 s and 5 s).
FAST_LEASES = {"GPTJOBS_LEASE_TTL_S": "3", "GPTJOBS_REAPER_INTERVAL_S": "0.5", "GPTJOBS_IDLE_CHECK_S": "1"}


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


def live_run(
    stack: Stack, max_iters: int, eval_interval: int, *, workers: int = 1, subscribers: int = 1, **over: Any
) -> tuple[str, list[Subscriber]]:
    """The stack up with `workers` training workers, and a run_config run on it, followed
    by `subscribers` live clients from its start."""
    stack.up(train=workers)
    run_id = stack.submit(run_config(max_iters, eval_interval, **over))["id"]
    return run_id, stack.follow(run_id, subscribers)


def statuses(events: list[Event]) -> list[str]:
    return [e["status"] for e in events if e["type"] == "status"]


def finish(
    stack: Stack, run_id: str, subs: list[Subscriber], row: Row, max_iters: int
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
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """This case's own stack, not started yet (`stack.up(...)` or `live_run(...)`), its
    artifacts in the suite's test store (GPTJOBS_TEST_STORE)."""
    yield from _own_stack(tmp_path, request, FAST_LEASES)


@pytest.fixture
def s3_stack(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """As `stack`, its artifacts on S3 whatever the suite's store: a moto server of its own
    (a stand-in for S3), checkpoints uploaded in 5 MiB parts (S3's smallest)."""
    with s3_server() as env:
        for k, v in env.items():  # for this process's reads of the store too
            monkeypatch.setenv(k, v)
        yield from _own_stack(tmp_path, request, {**FAST_LEASES, **env, **s3_settings(f"s3://gptjobs/{tmp_path.name}")})


def _own_stack(tmp_path: Path, request: pytest.FixtureRequest, env: dict[str, str]) -> Iterator[Stack]:
    s = Stack(tmp_path, env=env, appendonly=True)
    try:
        yield s
    finally:
        s.close(signal.SIGKILL, dump_logs=request.node.stash.get(OUTCOME, "failed") != "passed")


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
    rows = sorted(rows, key=lambda r: (int(n.group()) if (n := re.match(r"\d+", r.fault)) else 0, r.fault))  # by case
    terminalreporter.section("fault injection")
    for line in report_lines(rows):
        terminalreporter.write_line(line)
    for r in rows:
        if r.note:
            terminalreporter.write_line(f"  {r.fault}: {r.note}")
    if path := os.environ.get("GPTJOBS_FAULTS_REPORT"):
        Path(path).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
        terminalreporter.write_line(f"written to {path}")
