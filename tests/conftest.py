"""The test tiers, as pytest markers, by folder (registered in pyproject.toml):

    tests/unit/          no marker: no service at all (the fast tier)
    tests/integration/   `integration`: redis-server, Celery workers, uvicorn, SQLite
    tests/faults/        `faults`: each case its own stack, broken on purpose
    tests/browser/       `browser`: the dashboard in headless Chromium against the service
    any test using the `postgres_url` fixture: `postgres` (a throwaway PostgreSQL cluster)

so that `pytest -m "not integration and not faults and not browser and not postgres"`
(`make test-fast`) runs without redis-server, PostgreSQL or Chromium.

The stacks keep their artifacts where GPTJOBS_TEST_STORE says (tests/harness.py): `make test`
runs the whole suite with the directory, then the integration and fault tiers again with S3.
A test marked `store_specific` (it picks its stores itself, or checks a directory's files,
its S3 counterpart beside it) runs in the first pass only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import TEST_STORE, pg_bin, postgres_server

HERE = Path(__file__).resolve().parent
TIERS = ("integration", "faults", "browser")


def pytest_itemcollected(item: pytest.Item) -> None:
    folder = item.path.resolve().relative_to(HERE).parts[0]
    if folder in TIERS:
        item.add_marker(folder)
    if "postgres_url" in getattr(item, "fixturenames", ()):
        item.add_marker("postgres")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TEST_STORE == "directory":
        return
    chosen = [i for i in items if i.get_closest_marker("store_specific") is None]
    if len(chosen) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
        items[:] = chosen


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster's URL; without PostgreSQL's binaries the test skips,
    except under CI=true, where it fails."""
    if not (pg_bin("initdb") and pg_bin("pg_ctl")):
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test PostgreSQL: install it (apt-get install -y postgresql)")
        pytest.skip("NO POSTGRESQL BINARIES (initdb/pg_ctl) ON THIS MACHINE: PostgreSQL migrations NOT TESTED")
    with postgres_server() as url:
        yield url
