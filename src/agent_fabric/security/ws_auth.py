"""Authentication for WebSocket routes, declared like the HTTP routes' `require(...)`.

A browser cannot set an Authorization header on a WebSocket, so the JWT may also come as
`?token=`. A refusal is not raised here: a close code and reason only reach the client after the
handshake was accepted, so the route accepts and then closes with 4000 + the HTTP status
(4401 no or bad token, 4403 not allowed, 4429 rate limited).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import WebSocket

from agent_fabric.errors import FabricError, Forbidden, RateLimited, Unauthenticated
from agent_fabric.security.tokens import Principal


@dataclass(frozen=True, slots=True)
class WsAuth:
    """The caller, or why it is refused (then `principal` may still say who asked)."""

    principal: Principal | None
    refusal: FabricError | None = None


def ws_token(websocket: WebSocket) -> str | None:
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return websocket.query_params.get("token") or None


def require_ws(permission: str) -> Callable[[WebSocket], Coroutine[Any, Any, WsAuth]]:
    """A WebSocket dependency: verify the JWT, rate-limit its credential, check one permission."""

    async def dependency(websocket: WebSocket) -> WsAuth:
        fabric = websocket.app.state.fabric
        token = ws_token(websocket)
        if token is None:
            return WsAuth(None, Unauthenticated("send Authorization: Bearer <JWT> or ?token=<JWT>"))
        try:
            principal: Principal = await fabric.tokens.verify(token)
        except Unauthenticated as exc:
            return WsAuth(None, exc)
        if fabric.rate_limiter.acquire(principal.credential) is not None:
            return WsAuth(principal, RateLimited("rate limit for this credential exceeded"))
        if permission not in principal.permissions:
            return WsAuth(principal, Forbidden(f"role {principal.role!r} lacks permission {permission!r}"))
        return WsAuth(principal)

    dependency.required_permission = permission  # type: ignore[attr-defined]  # read by the route walk
    return dependency


def close_code(refusal: FabricError) -> int:
    """4000 + the HTTP status the same refusal would have had (4401, 4403, 4404, ...)."""
    return 4000 + refusal.status


def close_reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    return text.encode()[:120].decode(errors="ignore")
