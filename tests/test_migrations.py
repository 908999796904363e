"""Alembic migrations up and down, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

import api.db  # noqa: F401  (the tables)
from api.migrate import downgrade, upgrade
from tests.helpers import pg_bin, postgres_server


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if not (pg_bin("initdb") and pg_bin("pg_ctl")):
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test PostgreSQL: install it (apt-get install -y postgresql)")
        pytest.skip("NO POSTGRESQL BINARIES (initdb/pg_ctl) ON THIS MACHINE: PostgreSQL migrations NOT TESTED")
    with postgres_server() as url:
        yield url


def _round_trip(url: str) -> None:
    engine = create_engine(url)
    try:
        upgrade(url)
        assert {"runs", "events", "alembic_version"} <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            # The models and the migrations describe the same schema.
            assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
        downgrade(url, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(url)
        assert {"runs", "events"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_sqlite_up_down_up(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_postgres_up_down_up(postgres_url: str) -> None:
    _round_trip(postgres_url)
