"""The LLM gateway's tables (issue 16), on the same MetaData as storage/tables.py."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, String, Table, Text

from agent_fabric.storage.tables import Timestamp, metadata

# Gateway keys: only a SHA-256 of each key is kept; the key itself is shown once (to its driver or
# to the admin who minted an instance key) and never stored.
llm_keys = Table(
    "llm_keys",
    metadata,
    Column("key_hash", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # task | instance
    Column("job_id", String(128), nullable=True),  # task keys: the task it spends for
    Column("agent_label", String(160), nullable=False),
    Column("user_id", String(128), nullable=True),
    Column("task_budget", Boolean, nullable=False, default=False),  # the task has LLM limits of its own
    Column("instance_id", String(64), nullable=True),  # instance keys: the Agent Zero instance
    Column("instance_url", String(2048), nullable=True),  # ... and its URL (sessions on it are charged)
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=True),
    Column("revoked_at", Timestamp, nullable=True),
    Index("ix_llm_keys_tenant_job", "tenant_id", "job_id"),
)

# A tenant's own key for an upstream, sealed (security/sealing.py) before it reaches the table.
llm_upstream_keys = Table(
    "llm_upstream_keys",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("upstream", String(64), primary_key=True),
    Column("sealed_key", Text, nullable=False),
    Column("updated_by", String(128), nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

# One row per call through the gateway: what it cost and how it went.
llm_calls = Table(
    "llm_calls",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("job_id", String(128), nullable=True),
    Column("key_kind", String(16), nullable=False),
    Column("agent_label", String(160), nullable=False),
    Column("endpoint", String(32), nullable=False),  # chat.completions | embeddings
    Column("model", String(200), nullable=False),
    Column("upstream", String(64), nullable=True),
    Column("stream", Boolean, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("total_tokens", Integer, nullable=False),
    Column("estimated", Boolean, nullable=False),  # no usage from upstream: counted by the estimator
    Column("cost_usd", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("outcome", String(32), nullable=False),  # ok | upstream_error | refused_budget | refused_policy | ...
    Column("status_code", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_llm_calls_tenant_job", "tenant_id", "job_id"),
)
