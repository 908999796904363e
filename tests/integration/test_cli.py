"""`gptjobs up`: everything starts from one command, a busy port is a clear error, and
Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.harness import ROOT, free_port, wait_for


def _children(pid: int) -> set[int]:
    """Every live descendant of pid, from /proc."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(d.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_serves_refuses_a_busy_port_and_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTJOBS_")}  # up starts its own Redis
    env.update(GPTJOBS_TORCH_THREADS="1", PYTHONPATH=str(ROOT))
    port = free_port()
    argv = [sys.executable, "-m", "api.cli", "up", "--port", str(port), "--data-dir", str(tmp_path)]
    up = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        banner = []
        for line in up.stdout:
            banner.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(banner)
        assert "gptjobs is up." in text, text
        assert f"http://127.0.0.1:{port}" in text and str(tmp_path) in text
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"database": "ok", "redis": "ok"}
        assert (tmp_path / "gptjobs.db").exists()
        kids = wait_for(lambda: len(k := _children(up.pid)) >= 4 and k, 30, "redis, api and two workers")

        second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "already in use" in second.stderr, second.stderr

        up.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        assert up.wait(60) == 0
        wait_for(lambda: not any(_alive(k) for k in kids), 10, "every child to exit")
    finally:
        if up.poll() is None:
            up.kill()
