"""agent processes: session history of each process run (agents/lifecycle.py)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_process_runs",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.String(length=96), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("process", sa.String(length=160), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("tasks_done", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
    )
    with op.batch_alter_table("agent_process_runs", schema=None) as batch_op:
        batch_op.create_index("ix_agent_process_runs_agent_started", ["agent_id", "started_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("agent_process_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_agent_process_runs_agent_started")
    op.drop_table("agent_process_runs")
