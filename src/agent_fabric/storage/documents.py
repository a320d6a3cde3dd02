"""Versioned governance documents (policies, tenant configuration): the current version and history.

Every write is a new version; a deletion is a version too, so the history shows who removed what.
Writes happen in the caller's transaction, next to the audit entry and the outbox rows that
announce them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.errors import Conflict
from agent_fabric.storage.tables import governance_doc_versions, governance_docs
from agent_fabric.storage.timestamps import aware

POLICY = "policy"
CONFIG = "config"


@dataclass(frozen=True, slots=True)
class StoredDoc:
    kind: str
    doc_id: str
    tenant_id: str
    version: int
    body: dict[str, Any]
    deleted: bool
    at: datetime
    by: str

    def view(self) -> dict[str, Any]:
        return {"version": self.version, "deleted": self.deleted, "at": self.at, "by": self.by, "body": self.body}


def _doc(row: Any, *, history: bool = False) -> StoredDoc:
    m = row._mapping
    at = m["created_at" if history else "updated_at"]
    return StoredDoc(
        kind=m["kind"],
        doc_id=m["doc_id"],
        tenant_id=m["tenant_id"],
        version=m["version"],
        body=m["body"],
        deleted=bool(m["deleted"]),
        at=aware(at),
        by=m["created_by" if history else "updated_by"],
    )


class DocumentStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def current(self, kind: str, tenant_id: str | None = None) -> list[StoredDoc]:
        stmt = select(governance_docs).where(governance_docs.c.kind == kind, governance_docs.c.deleted.is_(False))
        if tenant_id is not None:
            stmt = stmt.where(governance_docs.c.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            return [_doc(r) for r in await conn.execute(stmt.order_by(governance_docs.c.doc_id))]

    async def get(self, kind: str, doc_id: str) -> StoredDoc | None:
        """The newest version, deleted or not."""
        stmt = select(governance_docs).where(governance_docs.c.kind == kind, governance_docs.c.doc_id == doc_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return _doc(row) if row else None

    async def history(self, kind: str, doc_id: str, limit: int = 100) -> list[StoredDoc]:
        stmt = (
            select(governance_doc_versions)
            .where(governance_doc_versions.c.kind == kind, governance_doc_versions.c.doc_id == doc_id)
            .order_by(governance_doc_versions.c.version.desc())
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            return [_doc(r, history=True) for r in await conn.execute(stmt)]

    async def put(
        self,
        conn: AsyncConnection,
        *,
        kind: str,
        doc_id: str,
        tenant_id: str,
        body: dict[str, Any],
        actor: str,
        deleted: bool = False,
        expected_version: int | None = None,
    ) -> StoredDoc:
        """Store the next version in the caller's transaction. Conflict if `expected_version` is
        stale or another writer stored the same version first."""
        now = datetime.now(UTC)
        locked = (
            await conn.execute(
                select(governance_docs.c.version)
                .where(governance_docs.c.kind == kind, governance_docs.c.doc_id == doc_id)
                .with_for_update()
            )
        ).scalar()
        current = int(locked or 0)
        if expected_version is not None and expected_version != current:
            raise Conflict(
                f"{kind} {doc_id!r} is at version {current}, not {expected_version}",
                code="version_conflict",
                current_version=current,
            )
        version = current + 1
        values = {"tenant_id": tenant_id, "version": version, "body": body, "deleted": deleted}
        try:
            await conn.execute(
                insert(governance_doc_versions).values(
                    kind=kind, doc_id=doc_id, created_at=now, created_by=actor, **values
                )
            )
        except IntegrityError:
            raise Conflict(f"{kind} {doc_id!r} changed concurrently; retry", code="version_conflict") from None
        if current:
            await conn.execute(
                update(governance_docs)
                .where(governance_docs.c.kind == kind, governance_docs.c.doc_id == doc_id)
                .values(updated_at=now, updated_by=actor, **values)
            )
        else:
            await conn.execute(
                insert(governance_docs).values(kind=kind, doc_id=doc_id, updated_at=now, updated_by=actor, **values)
            )
        return StoredDoc(kind, doc_id, tenant_id, version, body, deleted, now, actor)
