"""The Postgres engine's pool: a connection cut while it sat idle is replaced before anyone uses it."""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy import text

from agent_fabric.settings import DatabaseSettings, Settings
from agent_fabric.storage.engine import PING_AFTER_IDLE_SECONDS, create_engine
from tests.support import services


async def test_a_connection_cut_while_idle_is_replaced_unnoticed() -> None:
    engine = create_engine(Settings(database=DatabaseSettings(url=services.asyncpg_url(services.POSTGRES_DSN))))
    pings: list[object] = []
    ping = engine.sync_engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    engine.sync_engine.dialect.do_ping = counted  # type: ignore[method-assign]

    async def backend() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    try:
        first = await backend()
        assert await backend() == first and not pings  # reused at once: no ping, one round trip
        admin = await asyncpg.connect(services.POSTGRES_DSN)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()
        await asyncio.sleep(PING_AFTER_IDLE_SECONDS + 0.2)
        assert await backend() != first  # the ping found it gone; a new connection answered
        assert len(pings) == 1
    finally:
        await engine.dispose()
