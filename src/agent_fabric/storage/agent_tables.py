"""Tables of the agent registry (agents/): agents, their lifecycle history, discovery tokens.

Same MetaData as storage/tables.py, so Alembic and the fixtures see one schema. Agent
configuration is not here: it is a versioned governance document (kind "agent_config").
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table, Text, text

from agent_fabric.storage.tables import Json, Timestamp, metadata

# One row per agent. A package found on disk is a row in `discovered` with no tenant (the
# fabric's catalogue); registration binds a row to a tenant. The package path and command are
# what the process runtime starts; `manifest` keeps every key of the package's .env.discovery.
agents = Table(
    "agents",
    metadata,
    Column("id", String(96), primary_key=True),  # {agent_type}-{uuid}
    Column("tenant_id", String(64), nullable=True),  # NULL: discovered, not registered yet
    Column("name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("agent_type", String(48), nullable=False),
    Column("description", Text, nullable=False),
    Column("runtime", String(32), nullable=False),
    Column("package_path", Text, nullable=True),
    Column("command", Text, nullable=True),
    Column("subscribed_topics", Json, nullable=False),
    Column("findings_topic", String(255), nullable=True),
    Column("manifest", Json, nullable=False),
    Column("labels", Json, nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", Text, nullable=True),
    Column("status_changed_at", Timestamp, nullable=False),
    # The agent's NATS password for the bundled server, sealed (security/sealing.py).
    Column("nats_password", Text, nullable=True),
    Column("revision", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("registered_at", Timestamp, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    Index("ix_agents_tenant_status", "tenant_id", "status"),
    Index("ix_agents_name_version", "name", "version"),
    # The catalogue offers each package once, even when replicas scan at the same moment.
    Index(
        "ux_agents_catalogue",
        "name",
        "version",
        unique=True,
        postgresql_where=text("status = 'discovered'"),
        sqlite_where=text("status = 'discovered'"),
    ),
)

# Every lifecycle transition, with when, why and who: the history behind agents.status.
agent_transitions = Table(
    "agent_transitions",
    metadata,
    Column("agent_id", String(96), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("from_status", String(16), nullable=True),
    Column("to_status", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("actor", String(128), nullable=False),
    Column("at", Timestamp, nullable=False),
)

# One-time discovery tokens: only the SHA-256 of the token is stored. `used_at` is set by the
# same UPDATE that checks the token, so of two racing registrations exactly one wins.
agent_discovery_tokens = Table(
    "agent_discovery_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("token_id", String(32), nullable=False, unique=True),
    Column("tenant_id", String(64), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("used_at", Timestamp, nullable=True),
    Column("used_by_agent", String(96), nullable=True),
    Column("note", String(255), nullable=True),
    Index("ix_agent_discovery_tokens_tenant", "tenant_id"),
)
