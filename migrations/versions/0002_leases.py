"""leases: a run's restarts and its own max_restarts; events superseded by a resume

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_restarts", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("restarts", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("superseded", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("superseded")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("restarts")
        batch_op.drop_column("max_restarts")
