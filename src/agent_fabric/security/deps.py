"""FastAPI dependencies for authentication and authorisation, as named types.

Every route under /api and /ws declares exactly one permission through `require(...)` (or
`public(...)` for the credential exchange itself); tests/integration/test_identity.py walks the
route table to prove it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request

from agent_fabric.errors import Forbidden, RateLimited, Unauthenticated
from agent_fabric.security.tokens import Principal


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send Authorization: Bearer <JWT> (agent-fabric token --role ... prints one)")
    return token.strip()


def require(permission: str) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A dependency that authenticates the caller, rate-limits its credential and checks one permission."""

    async def dependency(request: Request) -> Principal:
        fabric = request.app.state.fabric
        principal: Principal = await fabric.tokens.verify(_bearer(request))
        request.state.principal = principal  # a refusal is audited with who asked
        retry_after = fabric.rate_limiter.acquire(principal.credential)
        if retry_after is not None:
            raise RateLimited(
                f"rate limit for this credential exceeded; retry in {retry_after:.2f} s",
                retry_after=max(1, round(retry_after + 0.5)),
            )
        if permission not in principal.permissions:
            raise Forbidden(f"role {principal.role!r} lacks permission {permission!r}")
        return principal

    dependency.required_permission = permission  # type: ignore[attr-defined]  # read by the route walk
    return dependency


def public(reason: str) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """Marks a route that takes no bearer token, saying why; rate-limited by client address."""

    async def dependency(request: Request) -> None:
        client = request.client.host if request.client else "unknown"
        retry_after = request.app.state.fabric.rate_limiter.acquire(f"ip:{client}")
        if retry_after is not None:
            raise RateLimited(
                f"too many requests from {client}; retry in {retry_after:.2f} s",
                retry_after=max(1, round(retry_after + 0.5)),
            )

    dependency.required_permission = "public"  # type: ignore[attr-defined]
    dependency.public_reason = reason  # type: ignore[attr-defined]
    return dependency


def tenant_scope(principal: Principal, tenant_id: str | None) -> str | None:
    """The tenant a request may act in: its own for tenant-bound roles; any (or all) for admin."""
    if principal.tenant_id is None:
        return tenant_id
    if tenant_id is not None and tenant_id != principal.tenant_id:
        raise Forbidden(f"a {principal.role} of tenant {principal.tenant_id!r} cannot act in tenant {tenant_id!r}")
    return principal.tenant_id
