"""Training through the service against training in-process: what does the worker path cost?

    python bench/worker_throughput.py [--iters 300] [--rounds 2] [--threads N]

The same config as bench/train_throughput.py runs (a) in this process through gpt.train
and (b) through the whole service path: POST /runs -> Celery worker process (solo pool)
-> events XADDed to Redis and written to SQLite -> read back with GET /runs/{id}/events.
Rounds alternate a, b, a, b so that both see the same machine load. Prints the median
step_ms of each (issue 3's bar: the worker's within 3% of in-process) and the median
wall time between iter events, which also counts the per-event work the worker adds
(JSON, XADD, batched DB writes, the cancel-flag check).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from train_throughput import CONFIG  # noqa: E402

from api.cli import free_port, redis_binary  # noqa: E402
from api.settings import usable_cores  # noqa: E402


def summarize(events: list[dict[str, Any]], skip: int) -> tuple[float, float]:
    iters = [e for e in events if e["type"] == "iter"][skip:]
    step = statistics.median(e["step_ms"] for e in iters)
    wall = statistics.median((b["ts"] - a["ts"]) * 1e3 for a, b in itertools.pairwise(iters))
    return step, wall


def in_process(config: dict[str, Any], data_dir: str, threads: int) -> list[dict[str, Any]]:
    from gpt.config import make_config
    from gpt.train import train

    with tempfile.TemporaryDirectory() as out:
        cfg = make_config({**config, "out_dir": out})
        return list(train(cfg, data_dir=data_dir, num_threads=threads))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=usable_cores())
    ap.add_argument("--skip", type=int, default=20, help="warm-up iterations left out of the medians")
    a = ap.parse_args()
    config = {**CONFIG, "max_iters": a.iters, "lr_decay_iters": a.iters, "log_interval": 1}

    with tempfile.TemporaryDirectory(prefix="gptjobs-bench-") as d:
        rport, aport = free_port(), free_port()
        env = dict(os.environ)
        env.update(
            GPTJOBS_DATA_DIR=d,
            GPTJOBS_REDIS_URL=f"redis://127.0.0.1:{rport}/0",
            GPTJOBS_DATABASE_URL=f"sqlite:///{d}/gptjobs.db",
            GPTJOBS_TORCH_THREADS=str(a.threads),
            PYTHONPATH=str(ROOT),
        )
        py = sys.executable
        procs = [
            subprocess.Popen(
                [redis_binary(), "--port", str(rport), "--save", "", "--dir", d], stdout=subprocess.DEVNULL
            )
        ]
        try:
            subprocess.run([py, "-m", "api.cli", "migrate"], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            log = open(os.path.join(d, "services.log"), "wb")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [py, "-m", "api.cli", "serve", "--port", str(aport)], env=env, cwd=ROOT, stdout=log, stderr=log
                )
            )
            procs.append(
                subprocess.Popen(
                    [py, "-m", "api.cli", "worker", "--queue", "train"], env=env, cwd=ROOT, stdout=log, stderr=log
                )
            )
            http = httpx.Client(base_url=f"http://127.0.0.1:{aport}", timeout=30)
            for _ in range(300):
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            results: dict[str, list[tuple[float, float]]] = {"in-process": [], "worker": []}
            for _ in range(a.rounds):
                results["in-process"].append(
                    summarize(in_process(config, os.path.join(d, "datasets"), a.threads), a.skip)
                )
                run = http.post("/runs", json={"config": config}).json()
                while (status := http.get(f"/runs/{run['id']}").json()["status"]) in ("queued", "running"):
                    time.sleep(0.5)
                assert status == "succeeded", status
                events, after = [], 0
                while True:
                    page = http.get(f"/runs/{run['id']}/events", params={"after": after, "limit": 10000}).json()
                    events += page["events"]
                    after = page["next_after"]
                    if not page["has_more"]:
                        break
                results["worker"].append(summarize(events, a.skip))
        finally:
            for p in reversed(procs):
                p.terminate()
                p.wait()
    print(f"{a.iters} iters x {a.rounds} rounds, {a.threads} torch threads; medians per round:")
    for name, rows in results.items():
        steps = ", ".join(f"{s:.2f}" for s, _ in rows)
        walls = ", ".join(f"{w:.2f}" for _, w in rows)
        print(f"  {name:10s} step_ms {steps}   wall ms/iter {walls}")
    ip = statistics.median(s for s, _ in results["in-process"])
    wk = statistics.median(s for s, _ in results["worker"])
    print(f"worker/in-process step_ms: {wk / ip:.3f} (bar: within 3%)")


if __name__ == "__main__":
    main()
