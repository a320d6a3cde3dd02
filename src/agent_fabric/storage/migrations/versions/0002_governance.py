"""governance: policies, approvals, budgets, outbox, audit

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 20:34:03.891532
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The audit trail is append-only: the database itself refuses to change or remove an entry.
_PG_APPEND_ONLY = (
    "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$",
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
)
_SQLITE_APPEND_ONLY = (
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
)


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("action", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("approvers", _json(), nullable=False),
        sa.Column("policy_id", sa.String(length=128), nullable=True),
        sa.Column("policy_version", sa.Integer(), nullable=True),
        sa.Column("context", _json(), nullable=True),
        sa.Column("event", _json(), nullable=True),
        sa.Column("requested_by", sa.String(length=128), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.create_index("ix_approvals_status_expiry", ["status", "expires_at"], unique=False)
        batch_op.create_index("ix_approvals_tenant_requested", ["tenant_id", "requested_at"], unique=False)
        batch_op.create_index("ux_approvals_task", ["tenant_id", "job_id"], unique=True)

    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("entry_id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=True),
        sa.Column("session_id", sa.String(length=128), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("request", _json(), nullable=True),
        sa.Column("response", _json(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_action_seq", ["action", "seq"], unique=False)
        batch_op.create_index("ix_audit_log_tenant_seq", ["tenant_id", "seq"], unique=False)
        batch_op.create_index("ux_audit_log_entry", ["entry_id"], unique=True)

    op.create_table(
        "budget_ledger",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=160), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("entities", _json(), nullable=False),
        sa.Column("reserved_entities", _json(), nullable=False),
        sa.Column("estimate", _json(), nullable=False),
        sa.Column("used", _json(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "job_id"),
    )
    with op.batch_alter_table("budget_ledger", schema=None) as batch_op:
        batch_op.create_index("ix_budget_ledger_state", ["state"], unique=False)

    op.create_table(
        "budget_periods",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=200), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("limits", _json(), nullable=False),
        sa.Column("used", _json(), nullable=False),
        sa.Column("carried", _json(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "entity", "period_start"),
    )
    op.create_table(
        "budgets",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=200), nullable=False),
        sa.Column("limits", _json(), nullable=False),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("carryover", sa.Boolean(), nullable=False),
        sa.Column("alert_threshold_percent", sa.Float(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used", _json(), nullable=False),
        sa.Column("reserved", _json(), nullable=False),
        sa.Column("carried", _json(), nullable=False),
        sa.Column("alerts_sent", _json(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "entity"),
    )
    op.create_table(
        "governance_doc_versions",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("doc_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("kind", "doc_id", "version"),
    )
    op.create_table(
        "governance_docs",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("doc_id", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("kind", "doc_id"),
    )
    with op.batch_alter_table("governance_docs", schema=None) as batch_op:
        batch_op.create_index("ix_governance_docs_tenant", ["kind", "tenant_id"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("msg_id", sa.String(length=256), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_unpublished", ["published_at", "id"], unique=False)

    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _PG_APPEND_ONLY if postgres else _SQLITE_APPEND_ONLY:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_no_update ON audit_log")
        op.execute("DROP FUNCTION audit_log_append_only()")
    else:
        op.execute("DROP TRIGGER audit_log_no_update")
        op.execute("DROP TRIGGER audit_log_no_delete")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_unpublished")

    op.drop_table("outbox")
    with op.batch_alter_table("governance_docs", schema=None) as batch_op:
        batch_op.drop_index("ix_governance_docs_tenant")

    op.drop_table("governance_docs")
    op.drop_table("governance_doc_versions")
    op.drop_table("budgets")
    op.drop_table("budget_periods")
    with op.batch_alter_table("budget_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_budget_ledger_state")

    op.drop_table("budget_ledger")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ux_audit_log_entry")
        batch_op.drop_index("ix_audit_log_tenant_seq")
        batch_op.drop_index("ix_audit_log_action_seq")

    op.drop_table("audit_log")
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_index("ux_approvals_task")
        batch_op.drop_index("ix_approvals_tenant_requested")
        batch_op.drop_index("ix_approvals_status_expiry")

    op.drop_table("approvals")
