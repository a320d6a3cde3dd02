"""Transactional outbox: an event is stored with the state change it announces, then sent.

Approval requests and decisions, tasks put back on the stream after approval, failure results of
rejected or expired approvals, and budget alerts are all written to `outbox` inside the
transaction that changes the state. The writer kicks the relay after its commit, so the event
leaves within milliseconds; if the process dies first, any replica's periodic sweep sends it.
Each row carries a fixed Nats-Msg-Id, so a row sent twice (a crash between publish and mark)
is dropped by the stream's duplicate window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy import delete, event, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric import names
from agent_fabric.security.internal_seal import TASK_PURPOSE, InternalSeal
from agent_fabric.storage.tables import outbox

log = logging.getLogger(__name__)

BATCH = 100
_WRITTEN = "agent_fabric.outbox_written"  # connection info: outbox rows written in this transaction
KEEP_SENT = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    subject: str
    msg_id: str
    body: bytes


async def enqueue(conn: AsyncConnection, *messages: OutboxMessage) -> None:
    """Store events in the caller's transaction. The connection is marked, and its return to the
    pool, which follows the commit, wakes the relay: whoever owns the transaction (a batched
    finish running hooks, an approval, a fold) need not know that events were written in it."""
    if messages:
        now = datetime.now(UTC)
        await conn.execute(
            insert(outbox),
            [{"subject": m.subject, "msg_id": m.msg_id, "body": m.body, "created_at": now} for m in messages],
        )
        conn.info[_WRITTEN] = True


class OutboxRelay:
    def __init__(self, engine: AsyncEngine, js: JetStreamContext, sweep_seconds: float, *, seal: InternalSeal) -> None:
        # Approved and released tasks go back on agent.execute.*: the seal is the fabric's word for them.
        self._seal = seal
        event.listen(engine.sync_engine, "checkin", self._checked_in)
        self._engine = engine
        self._js = js
        self._sweep = sweep_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pruned_at = datetime.now(UTC)

    def kick(self) -> None:
        self._wake.set()

    def _checked_in(self, _dbapi_connection: Any, record: Any) -> None:
        # After a commit (or a rollback, when the wake-up finds nothing new to send).
        if record is not None and record.info.pop(_WRITTEN, False):
            self.kick()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def shutdown(self) -> None:
        """Send what is waiting (best effort: what is left goes out from the next sweep). Idempotent."""
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await self.relay()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._sweep)
            self._wake.clear()
            try:
                await self.relay()
                await self._prune()
            except Exception as exc:  # database or NATS away: the rows wait for the next round
                log.warning("outbox relay failed; retrying", extra={"error": str(exc)[:300]})

    async def relay(self) -> int:
        """Send every unsent row, oldest first; returns how many were sent."""
        total = 0
        while True:
            async with self._engine.begin() as conn:
                rows = (
                    await conn.execute(
                        select(outbox.c.id, outbox.c.subject, outbox.c.msg_id, outbox.c.body)
                        .where(outbox.c.published_at.is_(None))
                        .order_by(outbox.c.id)
                        .limit(BATCH)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                sent: list[int] = []
                failure: Exception | None = None
                for row in rows:
                    try:
                        await self._js.publish(row.subject, row.body, timeout=5, headers=self._headers(row))
                    except Exception as exc:
                        failure = exc
                        break
                    sent.append(row.id)
                if sent:
                    await conn.execute(
                        update(outbox).where(outbox.c.id.in_(sent)).values(published_at=datetime.now(UTC))
                    )
            if failure is not None:
                raise failure
            total += len(sent)
            if len(rows) < BATCH:
                return total

    def _headers(self, row: Any) -> dict[str, str]:
        headers = {names.MSG_ID_HEADER: row.msg_id}
        if row.subject.startswith(names.TASK_SUBJECT_PREFIX + "."):
            headers[names.SEAL_HEADER] = self._seal.sign(TASK_PURPOSE, row.msg_id, row.body)
        return headers

    async def _prune(self) -> None:
        now = datetime.now(UTC)
        if now - self._pruned_at < timedelta(hours=1):
            return
        self._pruned_at = now
        async with self._engine.begin() as conn:
            await conn.execute(delete(outbox).where(outbox.c.published_at < now - KEEP_SENT))
