"""SQLite with two writing processes: WAL + busy_timeout + BEGIN IMMEDIATE, no "database is locked"."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select, update

from api.db import Database, E, R, Run, dumps, event_row, insert_events
from api.migrate import upgrade
from tests.harness import ROOT

WRITER = """
import sys, time
from api.db import Database, dumps, event_row, insert_events
db = Database(sys.argv[1])
for batch in range(200):  # a worker's batched event writes
    rows = []
    for i in range(20):
        seq = batch * 20 + i + 1
        ev = {"run_id": "w", "seq": seq, "attempt": 1, "type": "iter", "ts": time.time(), "iter": seq}
        rows.append(event_row(ev, dumps(ev)))
    with db.transaction() as s:
        insert_events(s, rows)
"""


def test_concurrent_writers_wait_instead_of_failing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    db = Database(url)
    with db.transaction() as s:
        s.add(Run(id="w", status="running", config={}, created_at=time.time()))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    # Meanwhile the API's kind of write: read, then write, in one transaction.
    n = 0
    while writer.poll() is None or n < 50:
        with db.transaction() as s:
            # Read, then write on what was read (as cancelling a queued run does): under
            # BEGIN IMMEDIATE both happen inside one transaction that waits for the lock.
            seq = (s.execute(select(func.max(E.seq)).where(E.run_id == "w")).scalar() or 0) + 1
            run_id = f"r{n}"
            s.add(Run(id=run_id, status="queued", config={}, created_at=time.time()))
            s.flush()
            s.execute(update(Run).where(R.id == run_id, R.status == "queued").values(status="cancelled"))
            ev = {"run_id": run_id, "seq": seq, "attempt": 0, "type": "status", "ts": 0.0, "status": "cancelled"}
            insert_events(s, [event_row(ev, dumps(ev))])
        n += 1
    assert writer.wait() == 0, writer.stderr.read() if writer.stderr else ""
    with db.session() as s:
        assert s.execute(select(func.count()).where(E.run_id == "w")).scalar() == 4000
        assert s.execute(select(func.count()).select_from(Run)).scalar() == n + 1
