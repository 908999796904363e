"""A worker asked to stop (Ctrl-C on `gptjobs up`, a container stop) loses nothing: the run
checkpoints, goes back to the queue, and the next worker resumes it from that checkpoint."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx

from api.migrate import upgrade
from tests.helpers import ROOT, TINY, free_port, redis_server, service_env, stop, wait_for, worker_argv


def test_worker_shutdown_requeues_and_resumes(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    with redis_server() as redis_url:
        db_url = f"sqlite:///{tmp_path / 'gptjobs.db'}"
        upgrade(db_url)
        env = service_env(tmp_path, redis_url, db_url)
        port = free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=open(logs / "api.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        workers: list[subprocess.Popen[bytes]] = []

        def start_worker(n: int) -> subprocess.Popen[bytes]:
            log = open(logs / f"train{n}.log", "wb")  # noqa: SIM115
            p = subprocess.Popen(worker_argv("train"), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            workers.append(p)
            return p

        try:
            http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            first = start_worker(1)
            wait_for(lambda: b" ready." in (logs / "train1.log").read_bytes(), 60, "the first worker")
            wait_for(lambda: _healthy(http), 60, "the API")
            config = {**TINY, "max_iters": 400, "lr_decay_iters": 400, "eval_interval": 100, "eval_iters": 2}
            run_id = http.post("/runs", json={"config": config}).json()["id"]
            wait_for(
                lambda: ((http.get(f"/runs/{run_id}").json()["progress"] or {}).get("iter") or 0) >= 30, 60, "iters"
            )

            first.send_signal(signal.SIGTERM)  # Celery's warm shutdown
            assert first.wait(30) == 0
            run = http.get(f"/runs/{run_id}").json()
            assert run["status"] == "queued" and "resumes from its checkpoint" in run["reason"], run
            events = http.get(f"/runs/{run_id}/events", params={"limit": 10000}).json()["events"]
            ckpt = [e for e in events if e["type"] == "checkpoint"][-1]
            stopped_at = ckpt["iter"]
            assert events[-1]["type"] == "status" and events[-1]["status"] == "queued"

            start_worker(2)
            done = wait_for(
                lambda: (r := http.get(f"/runs/{run_id}").json())["status"] not in ("queued", "running") and r,
                120,
                "the resumed run to end",
            )
            assert done["status"] == "succeeded", done
            assert done["attempt"] == 2
            events = http.get(f"/runs/{run_id}/events", params={"limit": 10000}).json()["events"]
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            resumed = [e for e in events if e["type"] == "status" and e["status"] == "running"][-1]
            assert resumed["from_iter"] == stopped_at and resumed["attempt"] == 2
            iters = [e["iter"] for e in events if e["type"] == "iter"]
            assert iters == list(range(400))  # every iteration once: nothing lost, nothing repeated
        finally:
            for p in [*workers, api]:
                stop(p)


def _healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False
