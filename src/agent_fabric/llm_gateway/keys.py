"""Gateway keys: what a caller of /v1/* spends for.

- A task key is minted when a task is dispatched (RunContext.model_endpoint) and names that task:
  its tenant, agent, user and job. It expires after the task's timeout plus LLM_KEY_GRACE_SECONDS,
  and is revoked when the task ends (any outcome) or is cancelled.
- An instance key is minted for an Agent Zero instance (POST /api/v1/llm/keys) and names the
  tenant and agent it spends for; it lives until it is revoked.
Only a SHA-256 of a key is stored. A live key is held in memory for LLM_KEY_CACHE_SECONDS
(key_cache.py); a revocation evicts it on every replica through a broadcast.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.llm_gateway.key_cache import GrantCache
from agent_fabric.storage.llm_tables import llm_keys
from agent_fabric.storage.task_store import utcnow
from agent_fabric.storage.timestamps import aware
from agent_fabric.tasks import TaskSpec

KEY_PREFIX = "afk-"
TASK = "task"
INSTANCE = "instance"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """Who a valid key spends for."""

    tenant_id: str
    kind: str
    agent_label: str
    job_id: str | None = None
    user: str | None = None
    instance_id: str | None = None
    instance_url: str | None = None
    task_budget: bool = False  # its task has a budget of its own ("task:<job_id>")

    @property
    def actor(self) -> str:
        return f"llm-key:{self.kind}:{self.job_id or self.instance_id}"


class GatewayKeys:
    def __init__(self, engine: AsyncEngine, grace_seconds: float, cache: GrantCache) -> None:
        self._engine = engine
        self._grace = timedelta(seconds=grace_seconds)
        self._cache = cache

    async def mint_for_task(self, spec: TaskSpec, timeout_seconds: float, *, task_budget: bool = False) -> str:
        """A key for this task's calls; valid until the task ends (at most its timeout plus grace)."""
        now = utcnow()
        user = spec.metadata.get("user")
        return await self._mint(
            tenant_id=spec.tenant_id,
            kind=TASK,
            job_id=spec.job_id,
            agent_label=spec.agent_definition.label,
            user_id=str(user) if user else None,
            task_budget=task_budget,
            created_at=now,
            expires_at=now + timedelta(seconds=timeout_seconds) + self._grace,
        )

    async def mint_for_instance(
        self, tenant_id: str, instance_id: str, agent_label: str, instance_url: str | None = None
    ) -> str:
        return await self._mint(
            tenant_id=tenant_id,
            kind=INSTANCE,
            instance_id=instance_id,
            instance_url=instance_url,
            agent_label=agent_label,
            created_at=utcnow(),
        )

    async def _mint(self, **row: Any) -> str:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        async with self._engine.begin() as conn:
            await conn.execute(insert(llm_keys).values(key_hash=key_hash(key), **row))
        return key

    async def authenticate(self, key: str, now: datetime | None = None) -> KeyGrant | None:
        """The grant of a live key, or None (unknown, expired or revoked)."""
        if not key.startswith(KEY_PREFIX):
            return None
        digest = key_hash(key)
        moment = now or utcnow()
        cached: KeyGrant | None = self._cache.get(digest, moment)
        if cached is not None:
            return cached
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(llm_keys).where(llm_keys.c.key_hash == digest))).first()
        if (
            row is None
            or row.revoked_at is not None
            or (row.expires_at is not None and aware(row.expires_at) <= moment)
        ):
            return None
        grant = KeyGrant(
            row.tenant_id,
            row.kind,
            row.agent_label,
            row.job_id,
            row.user_id,
            row.instance_id,
            row.instance_url,
            bool(row.task_budget),
        )
        self._cache.put(digest, grant, None if row.expires_at is None else aware(row.expires_at))
        return grant

    async def revoke_task(self, tenant_id: str, job_id: str) -> int:
        """Revoke every key of the task (idempotent); how many were live."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(llm_keys)
                .where(llm_keys.c.tenant_id == tenant_id, llm_keys.c.job_id == job_id, llm_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .returning(llm_keys.c.key_hash)
            )
            digests = list(result.scalars())
        await self._cache.revoked(digests)
        return len(digests)

    async def revoke_instance_key(self, tenant_id: str | None, key_id: str) -> bool:
        """Revoke an instance key by its id (the first 16 characters of its hash)."""
        conditions = [
            llm_keys.c.key_hash.startswith(key_id),
            llm_keys.c.kind == INSTANCE,
            llm_keys.c.revoked_at.is_(None),
        ]
        if tenant_id is not None:
            conditions.append(llm_keys.c.tenant_id == tenant_id)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(llm_keys).where(*conditions).values(revoked_at=utcnow()).returning(llm_keys.c.key_hash)
            )
            digests = list(result.scalars())
        await self._cache.revoked(digests)
        return bool(digests)
