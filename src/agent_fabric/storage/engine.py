"""The database engine and schema migrations (Alembic), for Postgres and the embedded SQLite."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from agent_fabric.settings import Settings

log = logging.getLogger(__name__)

# Shipped inside the package so an installed wheel (the container image) can migrate.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any stable 64-bit number: serialises concurrent `migrate` runs from several replicas.
MIGRATION_LOCK_KEY = 7_316_044_291
# A pooled connection is pinged before use only after sitting idle this long (see _ping_when_idle).
PING_AFTER_IDLE_SECONDS = 1.0
_CHECKED_IN_AT = "agent_fabric_checked_in_at"


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.database_url
    if url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        pool_size=settings.database.pool_size,
        max_overflow=settings.database.pool_size,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection before use only when it sat idle for PING_AFTER_IDLE_SECONDS.

    SQLAlchemy's pool_pre_ping pings on every checkout, and on asyncpg a ping is three round trips
    (BEGIN, an empty query, ROLLBACK), which tripled the cost of a one-statement checkout. The
    connections a ping saves are the ones cut while they sat in the pool (a database restart, an
    idle timeout); one used a moment ago that turns out dead fails its statement instead, and that
    disconnect makes SQLAlchemy replace every older pooled connection, as a failed ping does."""
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    @event.listens_for(pool, "checkin")
    def _checked_in(_dbapi: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _checkout(dbapi: DBAPIConnection, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
        since = record.info.get(_CHECKED_IN_AT)  # absent on a fresh connection: nothing to check
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi)
        except Exception as error:  # a connection that cannot answer ";" is gone, like the database's others
            raise exc.InvalidatePoolError(f"pooled connection failed its ping: {error}") from error


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
