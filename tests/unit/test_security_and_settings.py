"""Tokens, roles and unsafe settings refused at start-up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from jose import jwt

from agent_fabric.errors import Forbidden, Unauthenticated
from agent_fabric.security.deps import tenant_scope
from agent_fabric.security.tokens import TokenService
from agent_fabric.settings import SecuritySettings, Settings

SECRET = "unit-secret-0123456789-abcdefghijklmnop"


def service(tmp_path: Path, **jwt_over: object) -> TokenService:
    return TokenService(Settings(state_dir=tmp_path, jwt=SecuritySettings(secret=SECRET, **jwt_over)))


async def test_issued_token_verifies_with_role_and_tenant(tmp_path: Path) -> None:
    tokens = service(tmp_path)
    principal = await tokens.verify(tokens.issue(role="pod_admin", subject="ops", tenant_id="pod-7"))
    assert (principal.role, principal.tenant_id, principal.subject) == ("pod_admin", "pod-7", "ops")
    assert "tasks:submit" in principal.permissions
    admin = await tokens.verify(tokens.issue(role="admin", subject="root", tenant_id=None))
    assert admin.tenant_id is None


def claims(**over: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "sub": "x",
        "role": "agent",
        "tenant_id": "t",
        "iss": "agent-fabric",
        "aud": "agent-fabric",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        **over,
    }


@pytest.mark.parametrize(
    "bad",
    [
        claims(exp=int(time.time()) - 10),
        claims(nbf=int(time.time()) + 3600),
        claims(aud="someone-else"),
        claims(iss="someone-else"),
        claims(role="superuser"),
        claims(tenant_id=None),
    ],
)
async def test_bad_claims_are_401(tmp_path: Path, bad: dict[str, object]) -> None:
    token = jwt.encode({k: v for k, v in bad.items() if v is not None}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated):
        await service(tmp_path).verify(token)


async def test_forged_signature_is_401(tmp_path: Path) -> None:
    forged = jwt.encode(claims(), "another-secret-that-is-long-enough-000", algorithm="HS256")
    with pytest.raises(Unauthenticated):
        await service(tmp_path).verify(forged)


def test_non_admin_tokens_need_a_tenant(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tenant"):
        service(tmp_path).issue(role="viewer", subject="v", tenant_id=None)


async def test_generated_secret_is_private_and_stable(tmp_path: Path) -> None:
    a = TokenService(Settings(state_dir=tmp_path))
    b = TokenService(Settings(state_dir=tmp_path))
    assert (await b.verify(a.issue(role="admin", subject="s", tenant_id=None))).role == "admin"
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o777 == 0o600


async def test_tenant_scope(tmp_path: Path) -> None:
    tokens = service(tmp_path)
    pod = await tokens.verify(tokens.issue(role="agent", subject="a", tenant_id="p1"))
    admin = await tokens.verify(tokens.issue(role="admin", subject="a", tenant_id=None))
    assert tenant_scope(pod, None) == "p1" and tenant_scope(pod, "p1") == "p1"
    with pytest.raises(Forbidden):
        tenant_scope(pod, "p2")
    assert tenant_scope(admin, None) is None and tenant_scope(admin, "p2") == "p2"


def test_unsafe_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="32"):
        Settings(jwt=SecuritySettings(secret="short"))
    with pytest.raises(ValueError, match="LIVE"):
        Settings(mode="LIVE")
    with pytest.raises(ValueError, match="PUBLIC_KEY"):
        Settings(jwt=SecuritySettings(algorithm="RS256"))
    assert Settings(mode="LIVE", jwt=SecuritySettings(secret=SECRET)).mode == "LIVE"


def test_database_url_defaults_to_sqlite_in_state_dir(tmp_path: Path) -> None:
    url = Settings(state_dir=tmp_path).database_url
    assert url.startswith("sqlite+aiosqlite:///") and url.endswith("fabric.db") and str(tmp_path) in url
