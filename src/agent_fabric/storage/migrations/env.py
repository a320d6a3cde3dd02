"""Alembic environment: the URL comes from the fabric's settings, never from alembic.ini."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import agent_fabric.storage.llm_tables  # noqa: F401  # its tables join the metadata
from agent_fabric.storage import agent_process_tables, agent_tables  # noqa: F401  (register their tables)
from agent_fabric.storage.engine import MIGRATION_LOCK_KEY
from agent_fabric.storage.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Two replicas starting together must not both create the schema.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL: set AGENT_FABRIC_DATABASE_URL or run through `agent-fabric migrate`")
asyncio.run(_main(url))
