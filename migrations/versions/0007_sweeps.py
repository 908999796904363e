"""sweeps; runs.sweep_id, trial, params; Optuna's storage tables for the sweeps' studies

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # autogenerate writes sqlmodel.sql.sqltypes.AutoString without importing it
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENUMS = ("studydirection", "trialstate", "trialintermediatevaluetype", "trialvaluetype")


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("method", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("metric", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("goal", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("max_runs", sa.Integer(), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("early_stop", sa.JSON(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.create_index("ix_sweeps_created_id", ["created_at", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sweeps_owner"), ["owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_sweeps_status"), ["status"], unique=False)

    # Optuna 5.0's storage tables (schema version 12), as its models define them: the sweeps'
    # studies (api/study.py says why our migrations make them, not Optuna).
    op.create_table(
        "studies",
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("study_name", sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint("study_id"),
    )
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_studies_study_name"), ["study_name"], unique=True)

    op.create_table(
        "version_info",
        sa.Column("version_info_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=True),
        sa.Column("library_version", sa.String(length=256), nullable=True),
        sa.CheckConstraint("version_info_id=1"),
        sa.PrimaryKeyConstraint("version_info_id"),
    )
    op.create_table(
        "study_directions",
        sa.Column("study_direction_id", sa.Integer(), nullable=False),
        sa.Column("direction", sa.Enum("NOT_SET", "MINIMIZE", "MAXIMIZE", name="studydirection"), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("objective", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.study_id"],
        ),
        sa.PrimaryKeyConstraint("study_direction_id"),
        sa.UniqueConstraint("study_id", "objective"),
    )
    op.create_table(
        "study_system_attributes",
        sa.Column("study_system_attribute_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("key", sa.String(length=512), nullable=True),
        sa.Column("value_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.study_id"],
        ),
        sa.PrimaryKeyConstraint("study_system_attribute_id"),
        sa.UniqueConstraint("study_id", "key"),
    )
    op.create_table(
        "study_user_attributes",
        sa.Column("study_user_attribute_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("key", sa.String(length=512), nullable=True),
        sa.Column("value_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.study_id"],
        ),
        sa.PrimaryKeyConstraint("study_user_attribute_id"),
        sa.UniqueConstraint("study_id", "key"),
    )
    op.create_table(
        "trials",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=True),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column(
            "state", sa.Enum("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING", name="trialstate"), nullable=False
        ),
        sa.Column("datetime_start", sa.DateTime(), nullable=True),
        sa.Column("datetime_complete", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.study_id"],
        ),
        sa.PrimaryKeyConstraint("trial_id"),
    )
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_trials_study_id"), ["study_id"], unique=False)

    op.create_table(
        "trial_heartbeats",
        sa.Column("trial_heartbeat_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("heartbeat", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.trial_id"],
        ),
        sa.PrimaryKeyConstraint("trial_heartbeat_id"),
        sa.UniqueConstraint("trial_id"),
    )
    op.create_table(
        "trial_intermediate_values",
        sa.Column("trial_intermediate_value_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("intermediate_value", sa.Float(precision=53), nullable=True),
        sa.Column(
            "intermediate_value_type",
            sa.Enum("FINITE", "INF_POS", "INF_NEG", "NAN", name="trialintermediatevaluetype"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.trial_id"],
        ),
        sa.PrimaryKeyConstraint("trial_intermediate_value_id"),
        sa.UniqueConstraint("trial_id", "step"),
    )
    op.create_table(
        "trial_params",
        sa.Column("param_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=True),
        sa.Column("param_name", sa.String(length=512), nullable=True),
        sa.Column("param_value", sa.Float(precision=53), nullable=True),
        sa.Column("distribution_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.trial_id"],
        ),
        sa.PrimaryKeyConstraint("param_id"),
        sa.UniqueConstraint("trial_id", "param_name"),
    )
    op.create_table(
        "trial_system_attributes",
        sa.Column("trial_system_attribute_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=True),
        sa.Column("key", sa.String(length=512), nullable=True),
        sa.Column("value_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.trial_id"],
        ),
        sa.PrimaryKeyConstraint("trial_system_attribute_id"),
        sa.UniqueConstraint("trial_id", "key"),
    )
    op.create_table(
        "trial_user_attributes",
        sa.Column("trial_user_attribute_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=True),
        sa.Column("key", sa.String(length=512), nullable=True),
        sa.Column("value_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.trial_id"],
        ),
        sa.PrimaryKeyConstraint("trial_user_attribute_id"),
        sa.UniqueConstraint("trial_id", "key"),
    )
    op.create_table(
        "trial_values",
        sa.Column("trial_value_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("objective", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=True),
        sa.Column("value_type", sa.Enum("FINITE", "INF_POS", "INF_NEG", name="trialvaluetype"), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.trial_id"],
        ),
        sa.PrimaryKeyConstraint("trial_value_id"),
        sa.UniqueConstraint("trial_id", "objective"),
    )
    # The row Optuna's version manager would write on first use (two API replicas doing it at
    # once would collide on its one-row key).
    op.bulk_insert(
        sa.table(
            "version_info",
            sa.column("version_info_id", sa.Integer()),
            sa.column("schema_version", sa.Integer()),
            sa.column("library_version", sa.String()),
        ),
        [{"version_info_id": 1, "schema_version": 12, "library_version": "5.0.0"}],
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sweep_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column("trial", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("params", sa.JSON(), nullable=True))
        batch_op.create_index("ix_runs_sweep_trial", ["sweep_id", "trial"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_sweep_trial")
        batch_op.drop_column("params")
        batch_op.drop_column("trial")
        batch_op.drop_column("sweep_id")

    op.drop_table("trial_values")
    op.drop_table("trial_user_attributes")
    op.drop_table("trial_system_attributes")
    op.drop_table("trial_params")
    op.drop_table("trial_intermediate_values")
    op.drop_table("trial_heartbeats")
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_trials_study_id"))

    op.drop_table("trials")
    op.drop_table("study_user_attributes")
    op.drop_table("study_system_attributes")
    op.drop_table("study_directions")
    op.drop_table("version_info")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_study_name"))

    op.drop_table("studies")
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweeps_status"))
        batch_op.drop_index(batch_op.f("ix_sweeps_owner"))
        batch_op.drop_index("ix_sweeps_created_id")

    op.drop_table("sweeps")
    if op.get_bind().dialect.name == "postgresql":  # drop_table leaves the enum types
        for enum in ENUMS:
            sa.Enum(name=enum).drop(op.get_bind(), checkfirst=True)
