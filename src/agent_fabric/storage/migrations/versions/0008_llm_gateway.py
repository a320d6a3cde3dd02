"""llm gateway: gateway keys, tenants' sealed upstream keys, metered calls

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-06 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "llm_keys",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("agent_label", sa.String(length=160), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=True),
        sa.Column("task_budget", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("instance_id", sa.String(length=64), nullable=True),
        sa.Column("instance_url", sa.String(length=2048), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_hash"),
    )
    op.create_index("ix_llm_keys_tenant_job", "llm_keys", ["tenant_id", "job_id"], unique=False)
    op.create_table(
        "llm_upstream_keys",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("upstream", sa.String(length=64), nullable=False),
        sa.Column("sealed_key", sa.Text(), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "upstream"),
    )
    op.create_table(
        "llm_calls",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("key_kind", sa.String(length=16), nullable=False),
        sa.Column("agent_label", sa.String(length=160), nullable=False),
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("upstream", sa.String(length=64), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_llm_calls_tenant_job", "llm_calls", ["tenant_id", "job_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_llm_calls_tenant_job", table_name="llm_calls")
    op.drop_table("llm_calls")
    op.drop_table("llm_upstream_keys")
    op.drop_index("ix_llm_keys_tenant_job", table_name="llm_keys")
    op.drop_table("llm_keys")
