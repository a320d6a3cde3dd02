"""What every replica must agree on about access: revoked tokens and keys, and custom roles.

Kept in memory for the hot path, loaded from the database at start and every RELOAD_SECONDS,
and changed live by broadcasts on a NATS core subject, so a revocation on one replica takes
effect on all of them within milliseconds (the periodic reload covers a missed broadcast).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric import names
from agent_fabric.security.internal_seal import InternalSeal
from agent_fabric.security.replica_channel import ReplicaChannel
from agent_fabric.security.roles import BUILTIN_ROLES
from agent_fabric.storage.tables import custom_roles, revocations
from agent_fabric.storage.timestamps import aware_or_none

log = logging.getLogger(__name__)

RELOAD_SECONDS = 30.0


class AccessState:
    def __init__(self, engine: AsyncEngine, nc: NatsClient, seal: InternalSeal) -> None:
        self._engine = engine
        self._channel = ReplicaChannel(nc, seal)  # a broadcast grants permissions: only a replica may send one
        self._revoked: dict[tuple[str, str], datetime | None] = {}
        self._roles: dict[str, frozenset[str]] = {}
        self._sub: Any = None
        self._reloader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.reload()
        self._sub = await self._channel.subscribe(names.AUTH_CONTROL_SUBJECT, self._on_broadcast, what="access")
        self._reloader = asyncio.create_task(self._reload_loop(), name="access-reload")

    async def aclose(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def is_revoked(self, kind: str, value: str | None) -> bool:
        if value is None or (kind, value) not in self._revoked:
            return False
        expires = self._revoked[(kind, value)]
        return expires is None or expires > datetime.now(UTC)

    def permissions_for(self, role: str) -> frozenset[str] | None:
        return BUILTIN_ROLES.get(role) or self._roles.get(role)

    @property
    def custom_roles(self) -> dict[str, frozenset[str]]:
        return dict(self._roles)

    async def reload(self) -> None:
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            # Entries past their expiry can never matter again (the token itself has expired).
            await conn.execute(delete(revocations).where(revocations.c.expires_at < now))
            revoked = {(r.kind, r.value): aware_or_none(r.expires_at) for r in await conn.execute(select(revocations))}
            roles = {r.name: frozenset(r.permissions) for r in await conn.execute(select(custom_roles))}
        self._revoked, self._roles = revoked, roles

    async def broadcast(self, message: dict[str, Any]) -> None:
        """Apply locally at once, then tell the other replicas."""
        self._apply(message)
        body = orjson.dumps(message)
        await self._channel.publish(names.AUTH_CONTROL_SUBJECT, body, flush=True)

    async def _on_broadcast(self, msg: Any) -> None:
        try:
            self._apply(orjson.loads(msg.data))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("ignored malformed access broadcast", extra={"error": str(exc)})

    def _apply(self, message: dict[str, Any]) -> None:
        kind = message["kind"]
        if kind == "revoked":
            expires = message.get("expires_at")
            self._revoked[(message["what"], message["value"])] = datetime.fromisoformat(expires) if expires else None
        elif kind == "role":
            if message.get("permissions") is None:
                self._roles.pop(message["name"], None)
            else:
                self._roles[message["name"]] = frozenset(message["permissions"])

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            try:
                await self.reload()
            except Exception as exc:  # keep the last known state; the next reload may work
                log.warning("access state reload failed", extra={"error": str(exc)})
