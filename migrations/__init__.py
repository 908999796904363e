"""Alembic migrations (a package so that installs carry them; see api/migrate.py)."""
