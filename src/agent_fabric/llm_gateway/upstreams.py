"""Upstream providers: which one serves a model, and with whose key.

A model goes to the first upstream (AGENT_FABRIC_LLM_UPSTREAMS) whose allowlist matches it. The
key sent upstream is the tenant's own (registered through /api/v1/llm/upstream-keys, sealed at
rest) when it has one for that upstream, else the upstream's configured key. Either way the key
only ever travels in the Authorization header towards the upstream: never to the agent, a log, an
audit entry or a response.
"""

from __future__ import annotations

import fnmatch
import time

import httpx
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.security.sealing import Sealer
from agent_fabric.settings import LlmSettings, LlmUpstream
from agent_fabric.storage.llm_tables import llm_upstream_keys
from agent_fabric.storage.task_store import utcnow

# A tenant key changed on another replica is used here within this many seconds.
TENANT_KEY_CACHE_SECONDS = 5.0


class Upstreams:
    def __init__(self, cfg: LlmSettings, engine: AsyncEngine, sealer: Sealer) -> None:
        self._upstreams = list(cfg.upstreams)
        self._by_name = {u.name: u for u in self._upstreams}
        self._engine = engine
        self._sealer = sealer
        self._tenant_keys: dict[tuple[str, str], tuple[float, str | None]] = {}
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(cfg.upstream_timeout_seconds, connect=10.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )

    def route(self, model: str) -> LlmUpstream | None:
        for upstream in self._upstreams:
            if any(fnmatch.fnmatchcase(model, pattern) for pattern in upstream.models):
                return upstream
        return None

    def models(self) -> list[tuple[str, str]]:
        """(model, upstream) for every model named literally in an allowlist."""
        seen: dict[str, str] = {}
        for upstream in self._upstreams:
            for model in upstream.models:
                if not any(c in model for c in "*?[") and model not in seen:
                    seen[model] = upstream.name
        return sorted(seen.items())

    def known(self, name: str) -> bool:
        return name in self._by_name

    async def key_for(self, upstream: LlmUpstream, tenant_id: str) -> str | None:
        tenant_key = await self._tenant_key(tenant_id, upstream.name)
        if tenant_key is not None:
            return tenant_key
        return upstream.api_key.get_secret_value() if upstream.api_key else None

    async def _tenant_key(self, tenant_id: str, upstream: str) -> str | None:
        cached = self._tenant_keys.get((tenant_id, upstream))
        if cached is not None and time.monotonic() - cached[0] < TENANT_KEY_CACHE_SECONDS:
            return cached[1]
        async with self._engine.connect() as conn:
            sealed = (
                await conn.execute(
                    select(llm_upstream_keys.c.sealed_key).where(
                        llm_upstream_keys.c.tenant_id == tenant_id, llm_upstream_keys.c.upstream == upstream
                    )
                )
            ).scalar_one_or_none()
        plain = self._sealer.open(sealed) if sealed is not None else None
        self._tenant_keys[(tenant_id, upstream)] = (time.monotonic(), plain)
        return plain

    async def set_tenant_key(self, tenant_id: str, upstream: str, key: str, actor: str) -> None:
        values = {"sealed_key": self._sealer.seal(key), "updated_by": actor, "updated_at": utcnow()}
        async with self._engine.begin() as conn:
            insert_ = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            stmt = insert_(llm_upstream_keys).values(tenant_id=tenant_id, upstream=upstream, **values)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[llm_upstream_keys.c.tenant_id, llm_upstream_keys.c.upstream], set_=values
                )
            )
        self._tenant_keys.pop((tenant_id, upstream), None)

    async def delete_tenant_key(self, tenant_id: str, upstream: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(llm_upstream_keys).where(
                    llm_upstream_keys.c.tenant_id == tenant_id, llm_upstream_keys.c.upstream == upstream
                )
            )
        self._tenant_keys.pop((tenant_id, upstream), None)
        return bool(result.rowcount)

    async def aclose(self) -> None:
        await self.client.aclose()
