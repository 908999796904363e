"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright's
Python package; never `playwright install`), against the real parts on loopback: a
redis-server, uvicorn serving api.main:app, a training and a sampling Celery worker, SQLite,
and an API key, so that the page has to ask for one.

In CI (CI=true) a missing Chromium or Playwright fails the tests; elsewhere they skip,
saying what to install. Screenshots go to $GPTJOBS_ARTIFACTS (default tests/artifacts/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.auth import create_key
from api.db import Database
from api.migrate import upgrade
from tests.helpers import ROOT, free_port, redis_server, service_env, stop, wait_for, wait_healthy, worker_argv

# NOTES.md: what Chromium needs here. Playwright adds --headless and a fresh profile itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _missing(what: str) -> None:
    """A missing browser fails in CI (where .ci/run installs it) and skips, loudly, elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(f"BROWSER TESTS NOT RUN: {what}")


def chromium_path() -> str:
    found = os.environ.get("GPTJOBS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        _missing("no Chromium: apt-get install chromium")
    return str(found)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = Path(os.environ.get("GPTJOBS_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Site:
    url: str
    key: str
    http: httpx.Client  # with the key
    logs: Path

    def log_tail(self, name: str, n: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def run(self, run_id: str) -> dict[str, Any]:
        resp = self.http.get(f"/runs/{run_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data_dir = tmp_path_factory.mktemp("dashboard")
    logs = data_dir / "logs"
    logs.mkdir()
    with redis_server() as redis_url:
        db_url = f"sqlite:///{data_dir / 'gptjobs.db'}"
        upgrade(db_url)
        db = Database(db_url)
        _, key = create_key(db, "browser")
        db.dispose()
        env = service_env(data_dir, redis_url, db_url) | {"GPTJOBS_IDLE_CHECK_S": "1"}
        port = free_port()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for name, argv in [
                ("api", [sys.executable, "-m", "api.cli", "serve", "--port", str(port)]),
                ("train", worker_argv("train")),
                ("sample", worker_argv("sample")),
            ]:
                with open(logs / f"{name}.log", "wb") as f:
                    procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=f))
            url = f"http://127.0.0.1:{port}"
            http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

            wait_healthy(url, procs)
            for name in ("train", "sample"):
                wait_for(lambda n=name: b" ready." in (logs / f"{n}.log").read_bytes(), 90, f"the {name} worker")
            yield Site(url, key, http, logs)
            http.close()
        finally:
            for p in reversed(procs):
                stop(p)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("no Playwright: pip install -e '.[dev]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
