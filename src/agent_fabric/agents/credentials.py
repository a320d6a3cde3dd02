"""One-time discovery tokens, and the credentials an agent receives when it registers.

A discovery token (`afd_<secret>`) is minted by an admin or a tenant's pod_admin, shown once,
stored only as its SHA-256, and expires soon (AGENT_FABRIC_AGENTS_TOKEN_TTL_SECONDS, 15 min by
default). Registration spends it with one conditional UPDATE in the registration's own
transaction: of two registrations racing with one token exactly one wins, and a registration that
fails for any other reason leaves the token unspent.

A registered agent gets an API key of role `agent` named `agent:<agent_id>` in its tenant (the
same kind of key security/credentials.py issues, so it can be exchanged, listed and revoked like
any other) and a JWT minted for that key, whose subject `agent:<agent_id>` names the agent.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.errors import Unauthenticated
from agent_fabric.security.credentials import KEY_PREFIX
from agent_fabric.security.tokens import Principal
from agent_fabric.storage.agent_tables import agent_discovery_tokens
from agent_fabric.storage.tables import api_keys
from agent_fabric.storage.timestamps import aware, aware_or_none

TOKEN_PREFIX: Final = "afd_"
AGENT_SUBJECT_PREFIX: Final = "agent:"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def agent_subject(agent_id: str) -> str:
    """The `sub` of an agent's own credentials; key-exchanged JWTs read `key:agent:<agent_id>`."""
    return f"{AGENT_SUBJECT_PREFIX}{agent_id}"


def agent_id_of(principal: Principal) -> str | None:
    """Which agent a caller of role `agent` is, from its subject (None for anyone else)."""
    if principal.role != "agent":
        return None
    subject = principal.subject.removeprefix("key:")
    return subject[len(AGENT_SUBJECT_PREFIX) :] if subject.startswith(AGENT_SUBJECT_PREFIX) else None


@dataclass(frozen=True)
class SpentToken:
    token_id: str
    tenant_id: str


@dataclass(frozen=True)
class AgentKey:
    key_id: str
    api_key: str


class DiscoveryTokens:
    def __init__(self, engine: AsyncEngine, default_ttl_seconds: int) -> None:
        self._engine = engine
        self._ttl = default_ttl_seconds

    async def mint(
        self, actor: Principal, tenant_id: str, *, ttl_seconds: int | None, note: str | None, mode: str
    ) -> dict[str, Any]:
        """A new token for `tenant_id`; the only time its secret is shown."""
        secret = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        row = {
            "token_hash": _digest(secret),
            "token_id": uuid.uuid4().hex,
            "tenant_id": tenant_id,
            "created_by": actor.subject[:128],
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl_seconds or self._ttl),
            "note": note,
        }
        async with self._engine.begin() as conn:
            await conn.execute(insert(agent_discovery_tokens).values(row))
            await append(
                conn,
                AuditEntry(
                    "agent.discovery_token_created",
                    actor.subject,
                    tenant_id,
                    mode,
                    request={"token_id": row["token_id"], "expires_at": row["expires_at"], "note": note},
                ),
            )
        return {**_token_view(row), "discovery_token": f"{TOKEN_PREFIX}{secret}"}

    async def list_tokens(self, tenant_id: str | None) -> list[dict[str, Any]]:
        stmt = select(agent_discovery_tokens).order_by(agent_discovery_tokens.c.created_at.desc()).limit(500)
        if tenant_id is not None:
            stmt = stmt.where(agent_discovery_tokens.c.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            return [_token_view(dict(r._mapping)) for r in await conn.execute(stmt)]

    async def spend(self, conn: AsyncConnection, presented: str) -> SpentToken:
        """Mark the token used in the caller's transaction. 401 when it is unknown, used or
        expired (one message for all three: a prober learns nothing)."""
        if not presented.startswith(TOKEN_PREFIX) or len(presented) > 200:
            raise Unauthenticated("discovery token is unknown, used or expired")
        now = datetime.now(UTC)
        digest = _digest(presented[len(TOKEN_PREFIX) :])
        spent = (
            await conn.execute(
                update(agent_discovery_tokens)
                .where(
                    agent_discovery_tokens.c.token_hash == digest,
                    agent_discovery_tokens.c.used_at.is_(None),
                    agent_discovery_tokens.c.expires_at > now,
                )
                .values(used_at=now)
                .returning(agent_discovery_tokens.c.tenant_id, agent_discovery_tokens.c.token_id)
            )
        ).first()
        if spent is None:
            raise Unauthenticated("discovery token is unknown, used or expired")
        return SpentToken(str(spent.token_id), str(spent.tenant_id))

    async def attribute(self, conn: AsyncConnection, spent: SpentToken, agent_id: str) -> None:
        """Record which agent the token registered."""
        await conn.execute(
            update(agent_discovery_tokens)
            .where(agent_discovery_tokens.c.token_id == spent.token_id)
            .values(used_by_agent=agent_id)
        )


async def create_agent_key(conn: AsyncConnection, agent_id: str, tenant_id: str, actor: str) -> AgentKey:
    """An API key of role `agent` for this agent, in the registration's transaction."""
    key_id, prefix, secret = uuid.uuid4().hex, secrets.token_hex(4), secrets.token_urlsafe(32)
    await conn.execute(
        insert(api_keys).values(
            id=key_id,
            prefix=prefix,
            secret_hash=_digest(secret),
            name=agent_subject(agent_id),
            tenant_id=tenant_id,
            role="agent",
            created_by=actor[:128],
            created_at=datetime.now(UTC),
            expires_at=None,
        )
    )
    return AgentKey(key_id, f"{KEY_PREFIX}{prefix}_{secret}")


async def agent_key_ids(conn: AsyncConnection, agent_id: str, tenant_id: str) -> list[str]:
    """The live API keys issued to an agent (revoked when the agent is deleted)."""
    stmt = select(api_keys.c.id).where(
        api_keys.c.name == agent_subject(agent_id), api_keys.c.tenant_id == tenant_id, api_keys.c.revoked_at.is_(None)
    )
    return [r.id for r in await conn.execute(stmt)]


def _token_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "token_id": row["token_id"],
        "tenant_id": row["tenant_id"],
        "created_by": row["created_by"],
        "created_at": aware(row["created_at"]),
        "expires_at": aware(row["expires_at"]),
        "used_at": aware_or_none(row.get("used_at")),
        "used_by_agent": row.get("used_by_agent"),
        "note": row.get("note"),
    }
