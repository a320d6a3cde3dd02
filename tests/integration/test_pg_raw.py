"""Statements sent to asyncpg under a SQLAlchemy connection (storage/pg_raw.py) belong to its transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from agent_fabric.settings import DatabaseSettings, Settings
from agent_fabric.storage.engine import create_engine
from agent_fabric.storage.pg_raw import driver


class Boom(Exception):
    pass


async def test_a_raw_statement_commits_and_rolls_back_with_its_batch(postgres_url: str) -> None:
    engine = create_engine(Settings(database=DatabaseSettings(url=postgres_url)))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS raw_probe (k text PRIMARY KEY)"))
        # The raw statement first: SQLAlchemy has sent nothing yet, so no BEGIN either.
        with pytest.raises(Boom):
            async with engine.begin() as conn:
                await (await driver(conn)).execute("INSERT INTO raw_probe VALUES ($1)", "rolled back")
                assert (await conn.execute(text("SELECT count(*) FROM raw_probe"))).scalar_one() == 1
                raise Boom
        async with engine.begin() as conn:
            await (await driver(conn)).execute("INSERT INTO raw_probe VALUES ($1)", "kept")
            await conn.execute(text("INSERT INTO raw_probe VALUES ('kept too')"))
        # A failing raw statement fails the whole transaction, SQLAlchemy's statements with it.
        with pytest.raises(Exception, match="duplicate key"):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO raw_probe VALUES ('not kept')"))
                await (await driver(conn)).execute("INSERT INTO raw_probe VALUES ($1)", "kept")
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT k FROM raw_probe ORDER BY k"))).scalars().all()
        assert rows == ["kept", "kept too"]
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE IF EXISTS raw_probe"))
        await engine.dispose()
