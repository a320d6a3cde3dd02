"""Critical claims on a line of their own (Postgres): one statement on a held connection.

A critical task's way to `running` goes through its claim. Through a writer it cost a queue hop,
a flush task, a pool checkout and three round trips (BEGIN, the statement, COMMIT), each resumed
by an event loop that a flood keeps busy: behind 10,000 low tasks at the process's ceiling one
loop turn takes a few to tens of milliseconds, and that path took about eight of them. Here the
claim (one statement, so atomic without BEGIN/COMMIT) runs on a connection held for critical
claims, prepared once per connection, awaited by the claiming coroutine itself: one round trip
and one turn.

Any failure (the database away, a connection cut) drops that connection and raises; the caller
then takes the ordinary writer, whose handling of outages every other write shares.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from agent_fabric.telemetry.operation_metrics import OperationMetrics


@dataclass
class _Held:
    pooled: PoolProxiedConnection
    prepared: dict[str, Any] = field(default_factory=dict)

    @property
    def driver(self) -> Any:
        return self.pooled.driver_connection


class CriticalLine:
    """Up to `size` connections taken from the engine's pool and kept for critical claims (so
    they share its connect settings and its limit). Claims beyond `size` at once wait for one."""

    def __init__(self, engine: AsyncEngine, size: int = 2, metrics: OperationMetrics | None = None) -> None:
        self._engine = engine
        self._ok: Any = metrics.critical_line.labels("ok") if metrics else None
        self._failed: Any = metrics.critical_line.labels("failed") if metrics else None
        self._free: list[_Held] = []
        self._room = asyncio.Semaphore(size)
        self._closed = False

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """The rows (asyncpg records) of `sql` (asyncpg's $n parameters), run alone in autocommit."""
        async with self._room:
            try:
                held = await self._take()
            except BaseException:  # no connection to be had (the database away): the writer's turn
                self._count(self._failed)
                raise
            try:
                prepared = held.prepared.get(sql)
                if prepared is None:
                    prepared = held.prepared[sql] = await held.driver.prepare(sql)
                rows: list[Any] = await prepared.fetch(*args)
            except BaseException:
                self._count(self._failed)
                # Cut, refused or cancelled mid-statement: its state is unknown, so it is not reused.
                with contextlib.suppress(Exception):
                    await greenlet_spawn(held.pooled.invalidate)
                raise
            self._free.append(held)
            self._count(self._ok)
            return rows

    @staticmethod
    def _count(series: Any) -> None:
        if series is not None:
            series.inc()

    async def _take(self) -> _Held:
        if self._closed:
            raise RuntimeError("the critical line is closed")
        if self._free:
            return self._free.pop()
        return _Held(await self._engine.raw_connection())

    async def close(self) -> None:
        """Hand the held connections back to the pool (the engine closes them when disposed)."""
        self._closed = True
        free, self._free = self._free, []
        for held in free:
            with contextlib.suppress(Exception):
                await greenlet_spawn(held.pooled.close)
