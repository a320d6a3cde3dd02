"""agent process runs: the live state each replica records for its processes

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_process_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("job_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_process_runs", schema=None) as batch_op:
        batch_op.drop_column("job_id")
        batch_op.drop_column("state")
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("recorded_at")
