"""Alembic migrations up and down, on SQLite and on a real PostgreSQL server (the
`postgres_url` fixture of tests/conftest.py, which puts its test in the `postgres` tier)."""

from __future__ import annotations

from pathlib import Path

import optuna
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

import api.db  # noqa: F401  (the tables)
from api import study
from api.migrate import alembic_config, downgrade, upgrade


def _round_trip(url: str) -> None:
    engine = create_engine(url)
    try:
        upgrade(url)
        assert {"runs", "events", "alembic_version"} <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            # The models and the migrations describe the same schema: ours, and the tables of
            # Optuna's storage (the sweeps' studies) as the installed Optuna defines them, so an
            # upgrade of Optuna that changes them fails here until a migration follows it.
            assert compare_metadata(MigrationContext.configure(conn), [SQLModel.metadata, study.metadata()]) == []
        _optuna_beside_us(url)
        downgrade(url, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(url)
        assert {"runs", "events"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _optuna_beside_us(url: str) -> None:
    """Optuna's storage opens on the migrated tables, keeps a trial, and leaves our Alembic
    revision alone (it would stamp its own into the same alembic_version table)."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    st = study.storage(url)
    try:
        s = optuna.create_study(storage=st, study_name="migrations-test")
        trial = s.ask()
        trial.report(2.5, step=100)
        s.tell(trial, 2.0)
        assert optuna.load_study(study_name="migrations-test", storage=st).best_value == 2.0
        with st.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
    finally:
        st.engine.dispose()


def test_sqlite_up_down_up(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_postgres_up_down_up(postgres_url: str) -> None:
    _round_trip(postgres_url)
