"""scheduling: cancellation mark, dependency wait deadline, task dependencies, queue-depth index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("wait_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_tasks_tenant_status_agent", ["tenant_id", "status", "agent_label"], unique=False)
    op.create_table(
        "task_dependencies",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("depends_on", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "job_id", "depends_on"),
    )
    with op.batch_alter_table("task_dependencies", schema=None) as batch_op:
        batch_op.create_index("ix_task_dependencies_upstream", ["tenant_id", "depends_on"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("task_dependencies", schema=None) as batch_op:
        batch_op.drop_index("ix_task_dependencies_upstream")
    op.drop_table("task_dependencies")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_tenant_status_agent")
        batch_op.drop_column("wait_until")
        batch_op.drop_column("cancel_requested_at")
