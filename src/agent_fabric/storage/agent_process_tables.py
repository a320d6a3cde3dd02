"""Tables of the process runtime (agents/lifecycle.py): the session history of agent processes.

Same MetaData as storage/tables.py, so Alembic and the fixtures see one schema.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table, Text

from agent_fabric.storage.tables import Timestamp, metadata

# One row per process run (FR-LIFE-5): written when the process starts, completed when it ends.
# `owner` is the fabric replica that ran it; `reason` says why it ended when the fabric ended it
# (drained, missed heartbeats, cancelled task, memory limit) or how it failed on its own.
agent_process_runs = Table(
    "agent_process_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("agent_id", String(96), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("process", String(160), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("pid", Integer, nullable=True),
    Column("started_at", Timestamp, nullable=False),
    Column("ready_at", Timestamp, nullable=True),
    Column("ended_at", Timestamp, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("outcome", String(16), nullable=True),  # stopped | failed
    Column("reason", Text, nullable=True),
    Column("tasks_done", Integer, nullable=False, default=0),
    # While the run lives, its replica writes these every few seconds, so any replica can show
    # every replica's processes (and a replica that died shows as stale beats).
    Column("recorded_at", Timestamp, nullable=True),  # when its replica last wrote these
    Column("heartbeat_at", Timestamp, nullable=True),  # the process's own last heartbeat
    Column("state", String(16), nullable=True),
    Column("job_id", String(128), nullable=True),
    Index("ix_agent_process_runs_agent_started", "agent_id", "started_at"),
)
