"""Alembic environment: the schema is SQLModel.metadata from api.db, and the tables of
Optuna's storage that sweeps keep their studies in (api/study.py says why they are ours).

The URL comes from the Alembic config when a caller set one (api.migrate, tests), else
from Settings, so `alembic upgrade head` and `gptjobs migrate` agree.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlmodel import SQLModel

import api.db  # noqa: F401  (registers the tables on SQLModel.metadata)
from api import study
from api.settings import get_settings

config = context.config
target_metadata = [SQLModel.metadata, study.metadata()]
url = config.get_main_option("sqlalchemy.url") or get_settings().db_url


def run_migrations_offline() -> None:
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    section = config.get_section(config.config_ini_section) or {}
    section["sqlalchemy.url"] = url
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        # batch mode: SQLite cannot ALTER most things, so Alembic copies the table instead
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
