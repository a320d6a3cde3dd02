"""results: a partial index of finished tasks whose result is not yet noted published

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 08:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only the few rows between a task's end and its published mark are in it, so the result
    # sweep's query costs nothing however many tasks the table holds.
    op.create_index(
        "ix_tasks_result_unpublished",
        "tasks",
        ["finished_at"],
        unique=False,
        postgresql_where=sa.text("NOT result_published AND finished_at IS NOT NULL"),
        sqlite_where=sa.text("NOT result_published AND finished_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_result_unpublished", table_name="tasks")
