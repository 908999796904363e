"""The real parts on loopback (tests/harness.py's Stack): a redis-server process, a Celery
training worker process (solo pool), `gptjobs serve` (uvicorn) and SQLite in a temp data
dir, started once per session and shared; a sampling worker beside them for the tests that
ask for `sample_worker`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("gptjobs-data"), env={"GPTJOBS_IDLE_CHECK_S": "1"}) as s:
        yield s.up(train=1)


@pytest.fixture(scope="session")
def sample_worker(stack: Stack) -> Iterator[None]:
    """A Celery worker on the `sample` queue, beside the stack's training worker."""
    p = stack.start_worker("sample")
    try:
        yield
    finally:
        p.stop()
