"""Live gateway keys, held in memory for a few seconds so a call does not wait on the database.

A revocation (task ended or cancelled, instance key revoked) evicts the key here at once and on
every other replica through a core NATS broadcast (agent.control.llm_keys) of the keys' hashes.
A replica that misses the broadcast drops the entry after LLM_KEY_CACHE_SECONDS anyway, and a key
never outlives its stored expiry. Unknown keys are not cached (each attempt reads the table).
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient

from agent_fabric import names
from agent_fabric.security.internal_seal import InternalSeal
from agent_fabric.security.replica_channel import ReplicaChannel

log = logging.getLogger(__name__)

MAX_ENTRIES = 50_000


class GrantCache:
    def __init__(self, nc: NatsClient, ttl_seconds: float, seal: InternalSeal) -> None:
        self._channel = ReplicaChannel(nc, seal)  # replica broadcasts are sealed (README, "Trust at every door")
        self._ttl = ttl_seconds
        self._entries: dict[str, tuple[float, Any, datetime | None]] = {}
        self._sub: Any = None

    def get(self, digest: str, now: datetime) -> Any | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        cached_at, grant, expires_at = entry
        if time.monotonic() - cached_at >= self._ttl or (expires_at is not None and expires_at <= now):
            self._entries.pop(digest, None)
            return None
        return grant

    def put(self, digest: str, grant: Any, expires_at: datetime | None) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()  # rare: a burst of distinct keys; they are read again
        self._entries[digest] = (time.monotonic(), grant, expires_at)

    async def revoked(self, digests: list[str]) -> None:
        """Forget these keys here and tell every replica to."""
        if not digests:
            return
        for digest in digests:
            self._entries.pop(digest, None)
        try:
            body = orjson.dumps(digests)
            subject = names.LLM_KEYS_REVOKED_SUBJECT
            await self._channel.publish(subject, body)
        except Exception as exc:  # the entries lapse after the TTL anyway
            log.warning("key revocation broadcast failed", extra={"error": str(exc)})

    async def start(self) -> None:
        self._sub = await self._channel.subscribe(
            names.LLM_KEYS_REVOKED_SUBJECT, self._on_broadcast, what="gateway key revocation"
        )

    async def shutdown(self) -> None:
        """Stop listening (idempotent)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_broadcast(self, msg: Any) -> None:
        try:
            digests = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            log.warning("unreadable key revocation broadcast")
            return
        for digest in digests if isinstance(digests, list) else ():
            self._entries.pop(str(digest), None)
