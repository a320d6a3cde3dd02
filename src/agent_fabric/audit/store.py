"""Reading the audit trail: filters and keyset paging, newest first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.storage.tables import audit_log
from agent_fabric.storage.timestamps import aware


@dataclass(frozen=True)
class AuditQuery:
    tenant_id: str | None = None
    actor: str | None = None
    action: str | None = None  # exact, or a prefix ending in '.' ("approval.")
    session_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None  # the `next` cursor of the previous page
    limit: int = 100


class AuditStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def query(self, q: AuditQuery) -> tuple[list[dict[str, Any]], int | None]:
        """One page of entries and the cursor of the next page (None at the end)."""
        stmt = select(audit_log).order_by(audit_log.c.seq.desc()).limit(q.limit + 1)
        if q.tenant_id is not None:
            stmt = stmt.where(audit_log.c.tenant_id == q.tenant_id)
        if q.actor is not None:
            stmt = stmt.where(audit_log.c.actor == q.actor)
        if q.action is not None:
            stmt = stmt.where(
                audit_log.c.action.startswith(q.action, autoescape=True)
                if q.action.endswith(".")
                else audit_log.c.action == q.action
            )
        if q.session_id is not None:
            stmt = stmt.where(audit_log.c.session_id == q.session_id)
        if q.since is not None:
            stmt = stmt.where(audit_log.c.at >= q.since)
        if q.until is not None:
            stmt = stmt.where(audit_log.c.at < q.until)
        if q.before is not None:
            stmt = stmt.where(audit_log.c.seq < q.before)
        async with self._engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(stmt)]
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        return [_view(r) for r in rows], (rows[-1]["seq"] if more and rows else None)


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "id": row["entry_id"],
        "timestamp": aware(row["at"]),
        "actor": row["actor"],
        "tenant_id": row["tenant_id"],
        "session_id": row["session_id"],
        "action": row["action"],
        "mode": row["mode"],
        "request": row["request"],
        "response": row["response"],
        "cost_usd": row["cost_usd"],
    }
