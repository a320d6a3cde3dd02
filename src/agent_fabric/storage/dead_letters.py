"""Dead-letter records: events that could not become a task (no readable job_id)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.storage.batcher import WriteBatcher
from agent_fabric.storage.tables import dead_letters
from agent_fabric.storage.task_store import utcnow


@dataclass(frozen=True)
class DeadLetter:
    origin: str  # "nats" or "http"
    reason_code: str
    reason: str
    payload: bytes
    subject: str | None = None
    stream_seq: int | None = None
    headers: dict[str, str] | None = None
    received_at: datetime = field(default_factory=utcnow)

    def summary(self) -> dict[str, Any]:
        """What the agent.deadletter event carries: the reason and where it came from."""
        return {
            "origin": self.origin,
            "subject": self.subject,
            "stream_seq": self.stream_seq,
            "code": self.reason_code,
            "reason": self.reason,
            "size": len(self.payload),
            "received_at": self.received_at.isoformat(),
        }


async def _insert_op(conn: AsyncConnection, items: Sequence[DeadLetter]) -> list[None]:
    await conn.execute(
        insert(dead_letters),
        [
            {
                "received_at": d.received_at,
                "origin": d.origin,
                "subject": d.subject,
                "stream_seq": d.stream_seq,
                "reason_code": d.reason_code,
                "reason": d.reason,
                "headers": d.headers,
                "payload": d.payload,
                "size": len(d.payload),
            }
            for d in items
        ],
    )
    return [None] * len(items)


class DeadLetterStore:
    def __init__(self, batcher: WriteBatcher) -> None:
        self._batcher = batcher

    async def add(self, letter: DeadLetter) -> None:
        await self._batcher.submit(_insert_op, letter)
