"""Alembic migrations up and down, on SQLite and on a real PostgreSQL server (the
`postgres_url` fixture of tests/conftest.py, which puts its test in the `postgres` tier)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

import api.db  # noqa: F401  (the tables)
from api.migrate import downgrade, upgrade


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
