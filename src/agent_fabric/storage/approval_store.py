"""Approval rows: create, read, list, and the conditional UPDATEs that decide each exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.storage.tables import approvals
from agent_fabric.storage.timestamps import aware_or_none

PENDING = "pending"
APPROVED = "approved"
REJECTED = "rejected"
EXPIRED = "expired"
STATUSES = (PENDING, APPROVED, REJECTED, EXPIRED)


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    id: str
    tenant_id: str
    job_id: str | None
    action: str
    status: str
    approvers: list[str]
    policy_id: str | None
    policy_version: int | None
    context: dict[str, Any] | None
    event: dict[str, Any] | None
    requested_by: str | None
    requested_at: datetime
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None

    @classmethod
    def from_row(cls, row: Any) -> ApprovalRecord:
        m = dict(row._mapping)
        for key in ("requested_at", "expires_at", "decided_at"):
            m[key] = aware_or_none(m[key])
        return cls(**m)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "job_id": self.job_id,
            "action": self.action,
            "status": self.status,
            "approvers": self.approvers,
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "context": self.context,
            "requested_by": self.requested_by,
            "requested_at": self.requested_at,
            "expires_at": self.expires_at,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "reason": self.reason,
        }


async def insert_approval(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(approvals).values(**values))


async def approval_for_job(conn: AsyncConnection, tenant_id: str, job_id: str) -> ApprovalRecord | None:
    row = (
        await conn.execute(select(approvals).where(approvals.c.tenant_id == tenant_id, approvals.c.job_id == job_id))
    ).first()
    return ApprovalRecord.from_row(row) if row else None


async def decide_pending(
    conn: AsyncConnection, approval_id: str, status: str, by: str, reason: str | None, now: datetime
) -> ApprovalRecord | None:
    """Pending and not yet due -> `status`. None if someone else decided first or it is overdue."""
    res = await conn.execute(
        update(approvals)
        .where(approvals.c.id == approval_id, approvals.c.status == PENDING, approvals.c.expires_at > now)
        .values(status=status, decided_by=by, decided_at=now, reason=reason)
        .returning(*approvals.c)
    )
    row = res.first()
    return ApprovalRecord.from_row(row) if row else None


async def expire_due(conn: AsyncConnection, now: datetime, limit: int) -> list[ApprovalRecord]:
    """Overdue pending approvals -> expired. Replicas sweeping together split the rows between
    them (SKIP LOCKED) and the status condition makes each expiry happen once."""
    due = (
        select(approvals.c.id)
        .where(approvals.c.status == PENDING, approvals.c.expires_at <= now)
        .order_by(approvals.c.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = [r.id for r in await conn.execute(due)]
    if not ids:
        return []
    res = await conn.execute(
        update(approvals)
        .where(approvals.c.id.in_(ids), approvals.c.status == PENDING)
        .values(status=EXPIRED, decided_by="system", decided_at=now, reason="no decision before it expired")
        .returning(*approvals.c)
    )
    return [ApprovalRecord.from_row(r) for r in res]


class ApprovalReader:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, approval_id: str) -> ApprovalRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(approvals).where(approvals.c.id == approval_id))).first()
        return ApprovalRecord.from_row(row) if row else None

    async def for_job(self, tenant_id: str, job_id: str) -> ApprovalRecord | None:
        async with self._engine.connect() as conn:
            return await approval_for_job(conn, tenant_id, job_id)

    async def list(
        self, *, tenant_id: str | None, status: str | None, limit: int, offset: int
    ) -> Sequence[ApprovalRecord]:
        stmt = select(approvals).order_by(approvals.c.requested_at.desc(), approvals.c.id).limit(limit).offset(offset)
        if tenant_id is not None:
            stmt = stmt.where(approvals.c.tenant_id == tenant_id)
        if status is not None:
            stmt = stmt.where(approvals.c.status == status)
        async with self._engine.connect() as conn:
            return [ApprovalRecord.from_row(r) for r in await conn.execute(stmt)]
