"""The database engine and schema migrations (Alembic), for Postgres and the embedded SQLite."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agent_fabric.settings import Settings

log = logging.getLogger(__name__)

# Shipped inside the package so an installed wheel (the container image) can migrate.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any stable 64-bit number: serialises concurrent `migrate` runs from several replicas.
MIGRATION_LOCK_KEY = 7_316_044_291


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.database_url
    if url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_size=settings.database.pool_size,
        max_overflow=settings.database.pool_size,
        pool_pre_ping=True,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; NORMAL sync is durable across a process
    # crash (the case the fabric guards against), only an OS crash can lose the last commit.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = database_url
    return cfg


def migrate(database_url: str) -> None:
    """Upgrade the schema to head. Blocking: call from a thread inside an event loop."""
    command.upgrade(alembic_config(database_url), "head")


async def migrate_async(settings: Settings) -> None:
    if settings.database_url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(migrate, settings.database_url)


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
