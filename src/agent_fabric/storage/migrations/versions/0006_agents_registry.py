"""agents registry: agents, lifecycle transitions, one-time discovery tokens

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 05:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(length=96), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("agent_type", sa.String(length=48), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("runtime", sa.String(length=32), nullable=False),
        sa.Column("package_path", sa.Text(), nullable=True),
        sa.Column("command", sa.Text(), nullable=True),
        sa.Column("subscribed_topics", _JSON, nullable=False),
        sa.Column("findings_topic", sa.String(length=255), nullable=True),
        sa.Column("manifest", _JSON, nullable=False),
        sa.Column("labels", _JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("status_changed_at", _TS, nullable=False),
        sa.Column("nats_password", sa.Text(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("registered_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.create_index("ix_agents_tenant_status", ["tenant_id", "status"], unique=False)
        batch_op.create_index("ix_agents_name_version", ["name", "version"], unique=False)
        batch_op.create_index(
            "ux_agents_catalogue",
            ["name", "version"],
            unique=True,
            postgresql_where=sa.text("status = 'discovered'"),
            sqlite_where=sa.text("status = 'discovered'"),
        )
    op.create_table(
        "agent_transitions",
        sa.Column("agent_id", sa.String(length=96), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "seq"),
    )
    op.create_table(
        "agent_discovery_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sa.Column("used_by_agent", sa.String(length=96), nullable=True),
        sa.Column("note", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
        sa.UniqueConstraint("token_id"),
    )
    with op.batch_alter_table("agent_discovery_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_agent_discovery_tokens_tenant", ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("agent_discovery_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_agent_discovery_tokens_tenant")
    op.drop_table("agent_discovery_tokens")
    op.drop_table("agent_transitions")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_index("ux_agents_catalogue")
        batch_op.drop_index("ix_agents_name_version")
        batch_op.drop_index("ix_agents_tenant_status")
    op.drop_table("agents")
