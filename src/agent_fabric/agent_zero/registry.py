"""Agent Zero instances registered through the API: stored, routed to by every replica, removable.

A registration is written to `agent_zero_instances`, applied to this replica's Fleet at once
(after a first health check), then announced on agent.control.instances: every other replica
reloads the table within a moment, and the periodic control reload covers a missed announcement.
A POD administrator's instance belongs to its POD (that POD's work goes to it, no other POD's);
an admin may register one shared by every POD. The API key stays in the table for calls to the
instance: no view, log line or audit entry carries it. Removal is soft (`removed_at`), so the
ids in the audit trail keep pointing at a row.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.agent_zero.fleet import Fleet, Instance
from agent_fabric.audit.entries import Caller, append
from agent_fabric.errors import Conflict, Forbidden, InvalidRequest, NotFound
from agent_fabric.security.outbound_urls import OutboundGuard
from agent_fabric.security.sealing import SealedSecretError, Sealer
from agent_fabric.settings import Mode
from agent_fabric.storage.tables import agent_zero_instances as t
from agent_fabric.storage.timestamps import aware

log = logging.getLogger(__name__)

TOPIC = "instances"


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    id: str
    tenant_id: str | None
    url: str
    mode_set: Mode
    registered_by: str
    registered_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> InstanceRecord:
        at = row.registered_at
        return cls(row.id, row.tenant_id, row.url, row.mode_set, row.registered_by, aware(at))


def checked_url(raw: str) -> str:
    """An instance's base URL: http(s), a host, no credentials, query or fragment; no trailing slash."""
    try:
        parts = urlsplit(raw.strip())
    except ValueError:  # a malformed IPv6 literal, say
        raise InvalidRequest("url is not a valid URL", code="invalid_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("url must be an http:// or https:// URL with a host", code="invalid_url")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("url must not carry credentials: send the key as api_key", code="invalid_url")
    if parts.query or parts.fragment:
        raise InvalidRequest("url is the instance's base URL: no query or fragment", code="invalid_url")
    try:
        parts.port  # noqa: B018  # raises on a port that is not a number in range
    except ValueError:
        raise InvalidRequest("url has an invalid port", code="invalid_url") from None
    return raw.strip().rstrip("/")


class InstanceRegistry:
    def __init__(
        self,
        engine: AsyncEngine,
        fleet: Fleet,
        announce: Callable[[str], Awaitable[None]],
        sealer: Sealer,
        guard: OutboundGuard,
    ) -> None:
        self._guard = guard  # a tenant chose the URL: no SSRF (security/outbound_urls.py)
        self._engine = engine
        self._sealer = sealer  # keys are sealed in the table, opened only to build the instance's clients
        self._fleet = fleet
        self._announce = announce
        self._records: dict[str, InstanceRecord] = {}
        self._removed: set[str] = set()

    async def register(
        self, *, url: str, api_key: str, mode_set: Mode, tenant_id: str | None, caller: Caller
    ) -> InstanceRecord:
        """Store and apply a registration; its audit entry commits with it (never the key)."""
        actor = caller.actor
        url = checked_url(url)
        await self._guard.check(url)
        if self._fleet.by_url(url) is not None:
            raise Conflict(f"an Agent Zero instance at {url} is already in the fleet", code="instance_exists")
        record = InstanceRecord(secrets.token_hex(8), tenant_id, url, mode_set, actor, datetime.now(UTC))
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(t).values(
                        id=record.id,
                        tenant_id=tenant_id,
                        url=url,
                        api_key=self._sealer.seal(api_key),
                        mode_set=mode_set,
                        registered_by=actor,
                        registered_at=record.registered_at,
                    )
                )
                asked = {"url": url, "mode_set": mode_set, "shared": tenant_id is None}
                await append(conn, caller.entry("agent.instance.register", request=asked, response={"id": record.id}))
        except IntegrityError:  # another replica registered the URL a moment ago
            raise Conflict(f"an Agent Zero instance at {url} is already registered", code="instance_exists") from None
        await self._apply(record, api_key)
        await self._announce(TOPIC)
        return record

    async def remove(self, instance_id: str, *, caller: Caller, admin: bool) -> InstanceRecord:
        """Unregister: a POD administrator its own POD's instances, an admin those and shared ones.
        Its audit entry commits with the removal."""
        tenant_id = caller.tenant_id
        record = self._visible(instance_id, tenant_id)
        if record.tenant_id is None and not admin:
            raise Forbidden("a shared Agent Zero instance is removed by an admin", code="shared_instance")
        async with self._engine.begin() as conn:
            await conn.execute(
                update(t).where(t.c.id == instance_id, t.c.removed_at.is_(None)).values(removed_at=datetime.now(UTC))
            )
            entry = caller.entry("agent.instance.remove", request={"id": instance_id}, response={"url": record.url})
            await append(conn, entry)
        self._removed.add(instance_id)
        self._records.pop(instance_id, None)
        await self._fleet.remove(instance_id)
        await self._announce(TOPIC)
        return record

    def get(self, instance_id: str, tenant_id: str) -> InstanceRecord:
        return self._visible(instance_id, tenant_id)

    def views_for(self, tenant_id: str) -> list[dict[str, Any]]:
        """Every instance the POD may use or see: its own, the shared ones, the environment's."""
        return [self.view(i) for i in self._fleet.instances if i.tenant_id in (None, tenant_id)]

    def view(self, instance: Instance) -> dict[str, Any]:
        record = self._records.get(instance.instance_id or "")
        return {
            **instance.view(),
            "registered_by": record.registered_by if record else None,
            "registered_at": record.registered_at if record else None,
        }

    def instance(self, record: InstanceRecord) -> Instance | None:
        return self._fleet.registered().get(record.id)

    async def reload(self) -> None:
        """Make this replica's fleet match the table: add new registrations, drop removed ones."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(t).where(t.c.removed_at.is_(None)))).all()
        # A removal this replica made after the read above must not be undone by it.
        live = {row.id: row for row in rows if row.id not in self._removed}
        for instance_id in set(self._fleet.registered()) - set(live):
            self._records.pop(instance_id, None)
            await self._fleet.remove(instance_id)
        opened: list[tuple[InstanceRecord, str]] = []
        for row in live.values():
            if row.id in self._records:
                continue
            try:
                opened.append((InstanceRecord.from_row(row), self._sealer.open(row.api_key)))
            except SealedSecretError as exc:
                # Not routable here, but not fatal: the other instances still serve.
                log.error("cannot open a registered instance's API key", extra={"instance": row.id, "error": str(exc)})
        await asyncio.gather(*(self._apply(record, key) for record, key in opened))

    async def _apply(self, record: InstanceRecord, api_key: str) -> None:
        instance = self._fleet.make_instance(
            record.url,
            api_key,
            record.mode_set,
            tenant_id=record.tenant_id,
            instance_id=record.id,
            guard=self._guard,
        )
        self._records[record.id] = record
        await self._fleet.add(instance)

    def _visible(self, instance_id: str, tenant_id: str) -> InstanceRecord:
        record = self._records.get(instance_id)
        if record is None or record.tenant_id not in (None, tenant_id):
            raise NotFound(f"no registered Agent Zero instance {instance_id!r} in this POD", code="instance_not_found")
        return record
