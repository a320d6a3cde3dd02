"""JWT issue and verification (python-jose). HS256 by default; RS256/ES256 with a configured
public key or an identity provider's JWKS. `exp`, `nbf`, `iss`, `aud` are required and checked;
revoked token ids (`jti`) and revoked API keys (`key_id`) are refused on every replica."""

from __future__ import annotations

import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jose import JWTError, jwt

from agent_fabric.errors import Unauthenticated
from agent_fabric.security.access_state import AccessState
from agent_fabric.security.jwks import JwksKeys
from agent_fabric.security.roles import BUILTIN_ROLES
from agent_fabric.settings import Settings

SECRET_FILE = "jwt-secret"


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    tenant_id: str | None  # None only for admin: every tenant
    token_id: str | None
    permissions: frozenset[str]
    key_id: str | None = None
    token_expires: int | None = None
    amr: tuple[str, ...] = ()

    @property
    def credential(self) -> str:
        """What rate limits count against: the API key if the token came from one, else the subject."""
        return f"key:{self.key_id}" if self.key_id else f"sub:{self.tenant_id}:{self.subject}"


def signing_secret(settings: Settings) -> str:
    """The HS256 key: configured, or generated once into STATE_DIR (mode 0600) for embedded use."""
    if settings.jwt.secret is not None:
        return settings.jwt.secret.get_secret_value()
    path = Path(settings.state_dir) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


class TokenService:
    def __init__(self, settings: Settings, access: AccessState | None = None, jwks: JwksKeys | None = None) -> None:
        self._cfg = settings.jwt
        self._access = access
        self._jwks = jwks
        external = settings.jwt.public_key or settings.jwt.jwks_url
        self._sign_key = None if external else signing_secret(settings)
        self._verify_key: Any = settings.jwt.public_key or self._sign_key

    def issue(
        self,
        *,
        role: str,
        subject: str,
        tenant_id: str | None,
        ttl_seconds: int | None = None,
        key_id: str | None = None,
        amr: list[str] | None = None,
    ) -> str:
        if role != "admin" and not tenant_id:
            raise ValueError(f"role {role!r} is bound to a tenant: give --tenant")
        if self._sign_key is None:
            raise ValueError("this fabric verifies tokens from an external issuer; it cannot sign them")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject,
            "role": role,
            "iss": self._cfg.issuer,
            "aud": self._cfg.audience,
            "iat": now,
            "nbf": now,
            "exp": now + (ttl_seconds or self._cfg.default_ttl_seconds),
            "jti": uuid.uuid4().hex,
        }
        if tenant_id:
            claims["tenant_id"] = tenant_id
        if key_id:
            claims["key_id"] = key_id
        if amr:
            claims["amr"] = amr
        return str(jwt.encode(claims, self._sign_key, algorithm=self._cfg.algorithm))

    async def verify(self, token: str, *, at: float | None = None) -> Principal:
        """The token's principal. `at` (epoch seconds): judge expiry at that moment instead of now, for
        a NATS message verified when it is consumed but published (stored by JetStream) earlier."""
        options = {"require_exp": True, "require_sub": True, "require_nbf": False, "verify_exp": at is None}
        claims = await self._decode(token, options)
        if at is not None and not (isinstance(claims.get("exp"), int | float) and claims["exp"] > at):
            raise Unauthenticated("invalid token: it had expired when the message was published")
        role = claims.get("role")
        permissions = self._permissions(role)
        if permissions is None:
            raise Unauthenticated(f"token carries no known role (got {role!r})")
        tenant_id = claims.get("tenant_id")
        if role != "admin" and not isinstance(tenant_id, str):
            raise Unauthenticated(f"a {role} token must carry a tenant_id claim")
        jti, key_id = claims.get("jti"), claims.get("key_id")
        if self._access is not None and (
            self._access.is_revoked("token", jti) or self._access.is_revoked("key", key_id)
        ):
            raise Unauthenticated("token has been revoked")
        amr = claims.get("amr") or ()
        return Principal(
            subject=str(claims["sub"]),
            role=str(role),
            tenant_id=tenant_id if role != "admin" else None,
            token_id=jti,
            permissions=permissions,
            key_id=key_id,
            token_expires=int(claims["exp"]),
            amr=tuple(str(a) for a in amr) if isinstance(amr, list) else (),
        )

    async def owner_of(self, token: str) -> tuple[str, str | None, int | None]:
        """(jti, tenant_id, exp) of a token this fabric trusts, whether or not it is still usable:
        what a revocation by a tenant's key manager proves ownership with. Signature, issuer and
        audience are checked; expiry and revocation are not (revoking twice is harmless)."""
        claims = await self._decode(token, {"verify_exp": False, "require_sub": True})
        jti, tenant_id, exp = claims.get("jti"), claims.get("tenant_id"), claims.get("exp")
        if not isinstance(jti, str) or not jti:
            raise Unauthenticated("the token carries no jti, so it cannot be revoked alone (revoke its key)")
        return (
            jti,
            tenant_id if isinstance(tenant_id, str) else None,
            int(exp) if isinstance(exp, int | float) else None,
        )

    async def _decode(self, token: str, options: dict[str, bool]) -> dict[str, Any]:
        """The token's claims once its signature, issuer and audience are checked (and what
        `options` asks), else Unauthenticated."""
        key = await self._key_for(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self._cfg.algorithm],
                audience=self._cfg.audience,
                issuer=self._cfg.issuer,
                options=options,
            )
        except JWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        return claims

    def _permissions(self, role: Any) -> frozenset[str] | None:
        if not isinstance(role, str):
            return None
        if self._access is not None:
            return self._access.permissions_for(role)
        return BUILTIN_ROLES.get(role)

    async def _key_for(self, token: str) -> Any:
        if self._jwks is None:
            return self._verify_key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except JWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        found = await self._jwks.get(kid)
        if found is None:
            raise Unauthenticated(f"no key {kid!r} at the identity provider's JWKS")
        return found
