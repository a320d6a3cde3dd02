"""Machine credentials: API keys for agents and services, exchanged for short-lived JWTs.

A key reads `af_<prefix>_<secret>`: the prefix is stored in clear (to find the key and to show
it in listings), the secret only as its SHA-256, compared in constant time. Keys are scoped to
a tenant and a role, may expire, can be revoked (effective on every replica at once, including
JWTs already exchanged for the key), and record when they were last used. Refresh tokens are
single use: each refresh returns a new pair and spends the old token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.errors import Conflict, Forbidden, InvalidTask, NotFound, Unauthenticated
from agent_fabric.security.access_state import AccessState
from agent_fabric.security.roles import BUILTIN_ROLES, DELEGABLE_BY_POD_ADMIN, PERMISSIONS
from agent_fabric.security.tokens import Principal, TokenService
from agent_fabric.settings import SecuritySettings
from agent_fabric.storage.tables import api_keys, custom_roles, refresh_tokens, revocations

KEY_PREFIX = "af_"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int

    def view(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
        }


@dataclass(frozen=True)
class KeyHolder:
    """An API key's identity, as a token exchanged for it would carry."""

    key_id: str
    name: str
    role: str
    tenant_id: str | None
    expires_at: datetime | None

    @property
    def subject(self) -> str:
        return f"key:{self.name}"


class CredentialService:
    """Every change here is an administrative action: its audit entry (who, when, what, which tenant)
    is written in the transaction that makes the change (NFR-SEC-3), never after it."""

    def __init__(
        self,
        engine: AsyncEngine,
        tokens: TokenService,
        access: AccessState,
        cfg: SecuritySettings,
        mode_for: Callable[[str | None], str],
    ) -> None:
        self._mode_for = mode_for
        self._engine = engine
        self._tokens = tokens
        self._access = access
        self._cfg = cfg

    # -- API keys --
    async def create_key(
        self, actor: Principal, *, name: str, role: str, tenant_id: str | None, ttl_days: int | None
    ) -> dict[str, Any]:
        if self._access.permissions_for(role) is None:
            raise InvalidTask(f"no role {role!r}", code="unknown_role")
        if actor.tenant_id is not None:
            if tenant_id not in (None, actor.tenant_id):
                raise Forbidden(f"a {actor.role} of tenant {actor.tenant_id!r} cannot create keys for {tenant_id!r}")
            if role not in DELEGABLE_BY_POD_ADMIN and role in BUILTIN_ROLES:
                raise Forbidden(f"a {actor.role} cannot hand out role {role!r}")
            tenant_id = actor.tenant_id
        if role != "admin" and not tenant_id:
            raise InvalidTask(f"a {role} key needs a tenant_id", code="tenant_required")
        key_id, prefix, secret = uuid.uuid4().hex, secrets.token_hex(4), secrets.token_urlsafe(32)
        now = _now()
        row = {
            "id": key_id,
            "prefix": prefix,
            "secret_hash": _digest(secret),
            "name": name,
            "tenant_id": tenant_id if role != "admin" else None,
            "role": role,
            "created_by": actor.subject,
            "created_at": now,
            "expires_at": now + timedelta(days=ttl_days) if ttl_days else None,
        }
        async with self._engine.begin() as conn:
            await conn.execute(insert(api_keys).values(row))
            tenant = tenant_id if role != "admin" else None
            await self._audit(conn, actor, "auth.key.created", tenant, response=_key_view(row))
        return {**_key_view(row), "key": f"{KEY_PREFIX}{prefix}_{secret}"}

    async def list_keys(self, tenant_id: str | None) -> list[dict[str, Any]]:
        stmt = select(api_keys).order_by(api_keys.c.created_at.desc())
        if tenant_id is not None:
            stmt = stmt.where(api_keys.c.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            return [_key_view(dict(r._mapping)) for r in await conn.execute(stmt)]

    async def revoke_key(self, actor: Principal, key_id: str) -> None:
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
            # Another tenant's key does not exist as far as this caller can tell.
            if row is None or (actor.tenant_id is not None and row.tenant_id != actor.tenant_id):
                raise NotFound(f"no API key {key_id!r}")
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=_now()))
            await self._audit(
                conn,
                actor,
                "auth.key.revoked",
                row.tenant_id,
                request={"id": key_id, "name": row.name, "role": row.role},
            )
        await self._revoke("key", key_id, None, actor)

    async def revoke_token(
        self, actor: Principal, jti: str | None, expires: int | None, token: str | None = None
    ) -> None:
        """By jti (admin only: a jti names no tenant), or by presenting the token itself, which
        proves whose it is: a tenant's key manager revokes only its own tenant's tokens."""
        if token is not None:
            jti, owner, expires = await self._tokens.owner_of(token)
            if actor.tenant_id is not None and owner != actor.tenant_id:
                raise Forbidden(f"a {actor.role} of tenant {actor.tenant_id!r} cannot revoke another tenant's token")
        elif actor.tenant_id is not None:
            raise Forbidden(f"a {actor.role} revokes a token by presenting it (`token`): a jti alone names no tenant")
        assert jti is not None  # the body requires one of the two
        await self._revoke("token", jti, datetime.fromtimestamp(expires, UTC) if expires else None, actor, audit=True)

    async def _revoke(
        self, what: str, value: str, expires_at: datetime | None, actor: Principal, *, audit: bool = False
    ) -> None:
        async with self._engine.begin() as conn:
            if audit:
                request = {"jti": value, "expires_at": expires_at}
                await self._audit(conn, actor, "auth.token.revoked", actor.tenant_id, request=request)
            existing = (
                await conn.execute(select(revocations).where(revocations.c.kind == what, revocations.c.value == value))
            ).first()
            if existing is None:
                await conn.execute(
                    insert(revocations).values(
                        kind=what, value=value, expires_at=expires_at, revoked_at=_now(), revoked_by=actor.subject
                    )
                )
        await self._access.broadcast(
            {
                "kind": "revoked",
                "what": what,
                "value": value,
                "expires_at": expires_at.isoformat() if expires_at else None,
            }
        )

    # -- exchange and refresh --
    async def exchange(self, presented: str) -> TokenPair:
        row = await self._usable_key(presented)
        return await self._pair_for(row)

    async def refresh(self, presented: str) -> TokenPair:
        now = _now()
        async with self._engine.begin() as conn:
            # Spend the token in the same statement that checks it: two concurrent refreshes
            # with one token cannot both succeed.
            spent = (
                await conn.execute(
                    update(refresh_tokens)
                    .where(
                        refresh_tokens.c.token_hash == _digest(presented),
                        refresh_tokens.c.used_at.is_(None),
                        refresh_tokens.c.expires_at > now,
                    )
                    .values(used_at=now)
                    .returning(refresh_tokens.c.key_id)
                )
            ).first()
            if spent is None:
                raise Unauthenticated("refresh token is unknown, used or expired")
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == spent.key_id))).first()
        if row is None or not _usable(row, now):
            raise Unauthenticated("the API key behind this refresh token is revoked or expired")
        return await self._pair_for(row)

    async def key_holder(self, presented: str) -> KeyHolder:
        """Who an API key presented as is (the NATS door's `Authorization: Bearer af_...`) stands for.
        Refuses a key that is unknown, revoked or expired, as the exchange does."""
        row = await self._usable_key(presented)
        expires = row.expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return KeyHolder(row.id, row.name, row.role, row.tenant_id, expires)

    async def _usable_key(self, presented: str) -> Any:
        prefix, secret = _split(presented)
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.prefix == prefix))).first()
        # Compare even when the prefix is unknown, so timing does not reveal which prefixes exist.
        expected = row.secret_hash if row is not None else _digest("no such key")
        if not hmac.compare_digest(expected, _digest(secret)) or row is None or not _usable(row, _now()):
            raise Unauthenticated("API key is unknown, revoked or expired")
        return row

    async def _pair_for(self, row: Any) -> TokenPair:
        ttl = self._cfg.access_ttl_seconds
        access = self._tokens.issue(
            role=row.role, subject=f"key:{row.name}", tenant_id=row.tenant_id, ttl_seconds=ttl, key_id=row.id
        )
        refresh = secrets.token_urlsafe(32)
        now = _now()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(refresh_tokens).values(
                    token_hash=_digest(refresh),
                    key_id=row.id,
                    expires_at=now + timedelta(seconds=self._cfg.refresh_ttl_seconds),
                )
            )
            await conn.execute(update(api_keys).where(api_keys.c.id == row.id).values(last_used_at=now))
        return TokenPair(access, refresh, ttl)

    # -- custom roles --
    async def put_role(self, actor: Principal, name: str, permissions: list[str]) -> dict[str, Any]:
        if name in BUILTIN_ROLES:
            raise Conflict(f"{name!r} is a builtin role and cannot be changed", code="builtin_role")
        unknown = sorted(set(permissions) - PERMISSIONS)
        if unknown:
            raise InvalidTask(f"unknown permissions {unknown}; known: {sorted(PERMISSIONS)}", code="unknown_permission")
        now = _now()
        async with self._engine.begin() as conn:
            updated = await conn.execute(
                update(custom_roles)
                .where(custom_roles.c.name == name)
                .values(permissions=sorted(set(permissions)), updated_by=actor.subject, updated_at=now)
            )
            if not updated.rowcount:
                await conn.execute(
                    insert(custom_roles).values(
                        name=name, permissions=sorted(set(permissions)), updated_by=actor.subject, updated_at=now
                    )
                )
            request = {"name": name, "permissions": sorted(set(permissions))}
            outcome = {"created": not updated.rowcount}
            await self._audit(conn, actor, "auth.role.defined", None, request=request, response=outcome)
        await self._access.broadcast({"kind": "role", "name": name, "permissions": sorted(set(permissions))})
        return {"name": name, "permissions": sorted(set(permissions)), "builtin": False}

    async def delete_role(self, actor: Principal, name: str) -> None:
        if name in BUILTIN_ROLES:
            raise Conflict(f"{name!r} is a builtin role and cannot be deleted", code="builtin_role")
        async with self._engine.begin() as conn:
            deleted = await conn.execute(custom_roles.delete().where(custom_roles.c.name == name))
            if not deleted.rowcount:
                raise NotFound(f"no custom role {name!r}")
            await self._audit(conn, actor, "auth.role.deleted", None, request={"name": name})
        await self._access.broadcast({"kind": "role", "name": name, "permissions": None})

    async def _audit(
        self,
        conn: AsyncConnection,
        actor: Principal,
        action: str,
        tenant_id: str | None,
        *,
        request: Any = None,
        response: Any = None,
    ) -> None:
        entry = AuditEntry(
            action, actor.subject, tenant_id, self._mode_for(tenant_id), request=request, response=response
        )
        await append(conn, entry)


def _split(presented: str) -> tuple[str, str]:
    if not presented.startswith(KEY_PREFIX):
        raise Unauthenticated("not an agent-fabric API key (they start with af_)")
    prefix, _, secret = presented[len(KEY_PREFIX) :].partition("_")
    if not prefix or not secret:
        raise Unauthenticated("malformed API key")
    return prefix, secret


def _usable(row: Any, now: datetime) -> bool:
    expires = row.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return row.revoked_at is None and (expires is None or expires > now)


def _key_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        field: row.get(field)
        for field in (
            "id",
            "prefix",
            "name",
            "tenant_id",
            "role",
            "created_by",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        )
    }
