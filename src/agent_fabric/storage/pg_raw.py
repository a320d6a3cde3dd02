"""The hottest batch statements on Postgres, run on the asyncpg connection under SQLAlchemy's.

Every finished task costs a handful of batch statements (the settle, the budget ledger, the audit
entry, the published mark, the finish hooks' lookups). Through SQLAlchemy each one also pays its
execute machinery: a greenlet hop, bind processing over every array element, result rows wrapped
and processed. These statements are fixed texts over unnest()ed arrays whose parameters are built
here already in the driver's types, so they go to asyncpg directly, in the same transaction: the
connection and its transaction are SQLAlchemy's (pool, commit, rollback, invalidation stay its
own), and asyncpg's statement cache prepares each text once per connection. SQLite keeps its
SQLAlchemy statements.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection


async def driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn`, inside `conn`'s transaction.

    SQLAlchemy's asyncpg adapter opens the database transaction lazily, at the first statement
    it runs; a statement sent around it before that would run in autocommit, outside the batch.
    So the adapter's transaction is started here when it is not yet (the BEGIN it would have sent
    anyway), and it commits or rolls back with everything else at the end of the `begin()`
    block. Tested: a raw statement rolls back with its batch (tests/integration/test_pg_raw.py).
    """
    fairy = await conn.get_raw_connection()
    adapted = fairy.dbapi_connection
    if adapted is None:  # pragma: no cover - a checked-out connection always has one
        raise RuntimeError("no database connection under this SQLAlchemy connection")
    if adapted._transaction is None and not adapted.autocommit:
        await adapted._start_transaction()
    return fairy.driver_connection


def json_text(value: Any) -> str | None:
    """A JSON column's value as an element of a text array that the statement casts to jsonb
    (None stays SQL NULL)."""
    return None if value is None else orjson.dumps(value).decode()
