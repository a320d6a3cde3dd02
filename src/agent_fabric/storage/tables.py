"""The schema, as SQLAlchemy Core tables. Alembic migrations create exactly these."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# JSONB on Postgres (indexable, compact), plain JSON text on SQLite.
Json = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)

tasks = Table(
    "tasks",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("job_id", String(128), primary_key=True),
    Column("status", String(24), nullable=False),
    Column("priority", String(16), nullable=False),
    Column("runtime", String(32), nullable=False),
    Column("agent_label", String(160), nullable=False),
    Column("spec", Json, nullable=False),
    Column("spec_hash", String(64), nullable=False),
    Column("event_id", String(256), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    # The lease: which process runs the task and until when. A redelivered message may take the
    # task over only once the lease has lapsed, so two replicas never run it at once.
    Column("owner", String(64), nullable=True),
    Column("lease_until", Timestamp, nullable=True),
    Column("result", Json, nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("usage", Json, nullable=True),
    Column("result_published", Boolean, nullable=False, default=False),
    Column("created_at", Timestamp, nullable=False),
    Column("started_at", Timestamp, nullable=True),
    Column("finished_at", Timestamp, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    # Cancellation asked for while the task ran: the owner stops its driver; a later claim of the
    # task (its owner died) concludes it as cancelled instead of running it.
    Column("cancel_requested_at", Timestamp, nullable=True),
    # A task waiting for dependencies that do not exist yet fails at this moment (dependency_missing).
    Column("wait_until", Timestamp, nullable=True),
    Index("ix_tasks_status", "status"),
    Index("ix_tasks_tenant_created", "tenant_id", "created_at"),
    # Queue depth per tenant and per agent (queue_full), and list_pending(agent_id).
    Index("ix_tasks_tenant_status_agent", "tenant_id", "status", "agent_label"),
    # Finished tasks whose result is not noted published yet: what the result sweep reads.
    Index(
        "ix_tasks_result_unpublished",
        "finished_at",
        postgresql_where=text("NOT result_published AND finished_at IS NOT NULL"),
        sqlite_where=text("NOT result_published AND finished_at IS NOT NULL"),
    ),
)

# `depends_on` edges: job_id waits for depends_on (same tenant). Looked up from the finished side
# when a task ends, so its waiting dependents are released or failed in the same transaction.
task_dependencies = Table(
    "task_dependencies",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("job_id", String(128), primary_key=True),
    Column("depends_on", String(128), primary_key=True),
    Index("ix_task_dependencies_upstream", "tenant_id", "depends_on"),
)

# The job's event log: state transitions, driver progress and the end event, in order.
# SSE replays it for a client that reconnects with Last-Event-ID.
task_events = Table(
    "task_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("job_id", String(128), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("n", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(24), nullable=True),
    Column("data", Json, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Index("ux_task_events_order", "tenant_id", "job_id", "attempt", "n", unique=True),
)

# Checkpoints: job_id is the thread id. Each save is a new step; the newest step resumes.
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("thread_id", String(128), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("state", Json, nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

# Events that could not become tasks at all (no readable job_id): kept, never dropped.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("received_at", Timestamp, nullable=False),
    Column("origin", String(16), nullable=False),
    Column("subject", String(256), nullable=True),
    Column("stream_seq", BigInteger, nullable=True),
    Column("reason_code", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("headers", Json, nullable=True),
    Column("payload", LargeBinary, nullable=False),
    Column("size", Integer, nullable=False),
)

# Machine credentials. The secret is shown once; only its SHA-256 is kept (keys are 256-bit
# random, so a plain hash is enough; no password stretching needed).
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("prefix", String(16), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("tenant_id", String(64), nullable=True),
    Column("role", String(64), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=True),
    Column("revoked_at", Timestamp, nullable=True),
    Column("last_used_at", Timestamp, nullable=True),
    Index("ix_api_keys_tenant", "tenant_id"),
)

# Refresh tokens: single use, stored hashed, tied to the key they were exchanged from.
refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("key_id", String(32), nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("used_at", Timestamp, nullable=True),
)

# Revoked token ids (jti) and API keys, shared by every replica (and broadcast over NATS).
revocations = Table(
    "revocations",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("value", String(128), primary_key=True),
    Column("expires_at", Timestamp, nullable=True),
    Column("revoked_at", Timestamp, nullable=False),
    Column("revoked_by", String(128), nullable=False),
)

# Custom roles: named permission sets beside the builtin admin, pod_admin, agent, viewer.
custom_roles = Table(
    "custom_roles",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("permissions", Json, nullable=False),
    Column("updated_by", String(128), nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)
# Versioned governance documents: policies (kind "policy", doc_id = the policy id) and tenant
# configuration (kind "config", doc_id = the tenant id). The current version of each ...
governance_docs = Table(
    "governance_docs",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("doc_id", String(128), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("body", Json, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("updated_by", String(128), nullable=False),
    Index("ix_governance_docs_tenant", "kind", "tenant_id"),
)

# ... and every version ever stored (history; a deletion is a version too).
governance_doc_versions = Table(
    "governance_doc_versions",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("doc_id", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("body", Json, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("created_by", String(128), nullable=False),
)

# Approval requests: for a task (job_id set, `event` is the task to put back on the stream once
# approved) or for any other action an agent asks about. Decided exactly once: every decision is
# an UPDATE ... WHERE status = 'pending'.
approvals = Table(
    "approvals",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("job_id", String(128), nullable=True),
    Column("action", String(1024), nullable=False),
    Column("status", String(16), nullable=False),
    Column("approvers", Json, nullable=False),
    Column("policy_id", String(128), nullable=True),
    Column("policy_version", Integer, nullable=True),
    Column("context", Json, nullable=True),
    Column("event", Json, nullable=True),
    Column("requested_by", String(128), nullable=True),
    Column("requested_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("decided_by", String(128), nullable=True),
    Column("decided_at", Timestamp, nullable=True),
    Column("reason", Text, nullable=True),
    Index("ux_approvals_task", "tenant_id", "job_id", unique=True),
    Index("ix_approvals_status_expiry", "status", "expires_at"),
    Index("ix_approvals_tenant_requested", "tenant_id", "requested_at"),
)

# Budgets: one row per tenant entity ("tenant", "agent:<id>", "user:<id>"). Limits and counters are
# JSON objects {"tokens", "compute_seconds", "cost_usd"}; a null limit is unlimited. Rows without
# limits only track usage. Counters belong to the period starting at period_start.
budgets = Table(
    "budgets",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("entity", String(200), primary_key=True),
    Column("limits", Json, nullable=False),
    Column("period", String(8), nullable=False),
    Column("carryover", Boolean, nullable=False),
    Column("alert_threshold_percent", Float, nullable=False),
    Column("period_start", Timestamp, nullable=False),
    Column("used", Json, nullable=False),
    Column("reserved", Json, nullable=False),
    Column("carried", Json, nullable=False),
    Column("alerts_sent", Json, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

# Closed budget periods, for usage reports on past periods.
budget_periods = Table(
    "budget_periods",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("entity", String(200), primary_key=True),
    Column("period_start", Timestamp, primary_key=True),
    Column("period_end", Timestamp, nullable=False),
    Column("limits", Json, nullable=False),
    Column("used", Json, nullable=False),
    Column("carried", Json, nullable=False),
)

# One row per admitted task (or tracked usage): its reservation, then its settled usage. Written
# in the transactions that admit and finish the task; folded into `budgets` (and deleted) later,
# so the hot path never waits on a contended budget row to record usage.
budget_ledger = Table(
    "budget_ledger",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("job_id", String(160), primary_key=True),
    Column("state", String(10), nullable=False),
    Column("entities", Json, nullable=False),
    Column("reserved_entities", Json, nullable=False),
    Column("estimate", Json, nullable=False),
    Column("used", Json, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("settled_at", Timestamp, nullable=True),
    Index("ix_budget_ledger_state", "state"),
)

# Transactional outbox: events written in the same transaction as the state they announce, sent
# to JetStream right after the commit and by any replica's sweep if that process died first.
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("subject", String(256), nullable=False),
    Column("msg_id", String(256), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("published_at", Timestamp, nullable=True),
    Index("ix_outbox_unpublished", "published_at", "id"),
)

# The audit trail: append-only (the migration adds triggers refusing UPDATE and DELETE).
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("entry_id", String(32), nullable=False),
    Column("at", Timestamp, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("tenant_id", String(64), nullable=True),
    Column("session_id", String(128), nullable=True),
    Column("action", String(64), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("request", Json, nullable=True),
    Column("response", Json, nullable=True),
    Column("cost_usd", Float, nullable=True),
    Index("ux_audit_log_entry", "entry_id", unique=True),
    Index("ix_audit_log_tenant_seq", "tenant_id", "seq"),
    Index("ix_audit_log_action_seq", "action", "seq"),
)

# --- Agent Zero fleets (issue 4) ---

# Agent Zero instances registered through the API (the environment's instances are not stored).
# `tenant_id` null: shared by every POD; `mode_set` says which set routes to it (LIVE or SANDBOX).
# The API key is kept for calls to the instance and never returned by any endpoint.
agent_zero_instances = Table(
    "agent_zero_instances",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=True),
    Column("url", String(2048), nullable=False),
    Column("api_key", Text, nullable=False),
    Column("mode_set", String(8), nullable=False),
    Column("registered_by", String(128), nullable=False),
    Column("registered_at", Timestamp, nullable=False),
    Column("removed_at", Timestamp, nullable=True),
    Index("ix_agent_zero_instances_tenant", "tenant_id"),
    # One live registration per URL across replicas (the fleet knows an instance by its URL).
    Index(
        "ux_agent_zero_instances_live_url",
        "url",
        unique=True,
        postgresql_where=text("removed_at IS NULL"),
        sqlite_where=text("removed_at IS NULL"),
    ),
)

# A POD's fleet: the orchestrator (Agent 0) and the specialists under it. Each agent is one Agent
# Zero chat context created with the agent's profile on one instance.
fleet_agents = Table(
    "fleet_agents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("role", String(16), nullable=False),  # orchestrator | specialist
    Column("profile", String(128), nullable=True),
    Column("parent_id", String(32), nullable=True),
    Column("instance_url", String(2048), nullable=True),
    Column("context_id", String(64), nullable=True),
    Column("status", String(16), nullable=False),  # starting | idle | busy | error | terminated
    Column("mode", String(8), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("last_activity_at", Timestamp, nullable=False),
    Column("terminated_at", Timestamp, nullable=True),
    Column("last_error", Text, nullable=True),
    # The task running in the agent's chat now (its job_id; the row's tenant is the task's) and
    # until when the claim holds unless renewed: a crashed replica's claim lapses by itself.
    Column("claimed_by", String(128), nullable=True),
    Column("claimed_until", Timestamp, nullable=True),
    Index("ix_fleet_agents_tenant_status", "tenant_id", "status"),
)

# The seed's AgentSession: a POD administrator's conversation with Agent Zero.
agent_sessions = Table(
    "agent_sessions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("agent_zero_session_id", String(64), nullable=True),  # Agent Zero's context_id
    Column("instance_url", String(2048), nullable=True),
    Column("agent_profile", String(128), nullable=True),
    Column("status", String(16), nullable=False),  # active | idle | terminated | error
    Column("mode", String(8), nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("last_activity_at", Timestamp, nullable=False),
    Column("terminated_at", Timestamp, nullable=True),
    Column("estimated_cost_usd", Float, nullable=False, default=0.0),
    Column("message_count", Integer, nullable=False, default=0),
    Column("busy", Boolean, nullable=False, default=False),
    Column("last_error", Text, nullable=True),
    Column("last_seq", BigInteger, nullable=False, default=0),  # the newest agent_session_events.seq
    Column("log_floor", Integer, nullable=False, default=-1),  # the newest Agent Zero log item `no` seen
    Index("ix_agent_sessions_tenant_status", "tenant_id", "status"),
    Index("ix_agent_sessions_status_activity", "status", "last_activity_at"),
)

# What a session said and heard, in order: the WebSocket replays it after a reconnect.
agent_session_events = Table(
    "agent_session_events",
    metadata,
    Column("session_id", String(36), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("kind", String(24), nullable=False),  # message | progress | response | error | terminated
    Column("data", Json, nullable=True),
    Column("created_at", Timestamp, nullable=False),
)

# Decision records: every high-impact action proposed or taken, and the human ruling on it.
decisions = Table(
    "decisions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("kind", String(160), nullable=False),  # e.g. task:DEPLOY_GPU (task types run to 128 characters)
    Column("subject", String(160), nullable=True),  # the job id or agent id it is about
    Column("approval_id", String(32), nullable=True),
    Column("status", String(16), nullable=False),  # proposed | approved | rejected | executed | failed | expired
    Column("proposed_by", String(128), nullable=False),
    Column("detail", Json, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("overridden_by", String(128), nullable=True),
    Column("override_notes", Text, nullable=True),
    Column("overridden_at", Timestamp, nullable=True),
    Index("ix_decisions_tenant_created", "tenant_id", "created_at"),
    Index("ux_decisions_tenant_subject_kind", "tenant_id", "subject", "kind", unique=True),
    Index("ix_decisions_approval", "approval_id"),
)
