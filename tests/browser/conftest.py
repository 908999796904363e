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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, Stack

# What Chromium needs on this kind of machine. Playwright adds --headless and a fresh profile itself.
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


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole service, closed by an API key (site.key, which site.http sends)."""
    env = {"GPTJOBS_IDLE_CHECK_S": "1", "GPTJOBS_SWEEP_INTERVAL_S": "0.3"}  # a sweep's runs pruned in time
    with Stack(tmp_path_factory.mktemp("dashboard"), env=env) as s:
        yield s.up(train=1, sample=1, prepare=1, key="browser")


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
