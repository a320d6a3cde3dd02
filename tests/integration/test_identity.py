"""Identity and access on real services: API keys, exchange and refresh, revocation shared by
replicas, custom roles, the route-permission walk, rate limits, headers, CORS, JWKS."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.routing import APIRoute, APIWebSocketRoute
from jose import jwk, jwt
from sqlalchemy import update

from agent_fabric.app import create_app
from agent_fabric.settings import HttpSettings, SecuritySettings
from agent_fabric.storage.tables import api_keys
from tests.conftest import RunningApp, make_settings, new_job_id, running_app


def echo(job: str, tenant: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"job_id": job, "agent_definition": {"runtime": "builtin"}, "task": {"type": "echo"}}
    if tenant:
        body["tenant_id"] = tenant
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_key(
    app: RunningApp, role: str, tenant: str | None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    response = await app.client.post(
        "/api/v1/auth/keys",
        json={"name": f"{role}-key", "role": role, "tenant_id": tenant},
        headers=headers or app.auth(),
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def exchange(app: RunningApp, key: str) -> dict[str, Any]:
    response = await app.client.post("/api/v1/auth/token", json={"api_key": key})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_every_api_and_ws_route_declares_a_permission(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, "nats://127.0.0.1:1"))
    checked = 0
    for route in _routes(app.routes):
        if not isinstance(route, APIRoute | APIWebSocketRoute) or not route.path.startswith(("/api", "/ws")):
            continue
        declared = [getattr(d.call, "required_permission", None) for d in route.dependant.dependencies]
        declared += [getattr(d.call, "required_permission", None) for d in _nested(route.dependant.dependencies)]
        assert any(declared), f"{route.path} {getattr(route, 'methods', '')} declares no permission"
        checked += 1
    assert checked >= 12


def _routes(routes: list[Any]) -> Iterator[Any]:
    """Every route, including those of included routers (FastAPI keeps them behind the router)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def _nested(deps: list[Any]) -> Iterator[Any]:
    for dep in deps:
        yield from dep.dependencies
        yield from _nested(dep.dependencies)


async def test_api_key_lifecycle(fabric_app: RunningApp) -> None:
    created = await new_key(fabric_app, "agent", "pod-k")
    assert created["key"].startswith(f"af_{created['prefix']}_") and created["tenant_id"] == "pod-k"
    pair = await exchange(fabric_app, created["key"])
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 900
    submit = await fabric_app.client.post(
        "/api/v1/tasks", json=echo(new_job_id()), headers=bearer(pair["access_token"])
    )
    assert submit.status_code == 202 and submit.json()["tenant_id"] == "pod-k"

    listed = (await fabric_app.client.get("/api/v1/auth/keys", headers=fabric_app.auth())).json()["items"]
    mine = next(k for k in listed if k["id"] == created["id"])
    assert mine["last_used_at"] is not None and "key" not in mine and "secret_hash" not in mine
    assert created["key"] not in json.dumps(listed)

    for wrong in (created["key"] + "x", "af_nope_nope", "not-a-key-at-all"):
        refused = await fabric_app.client.post("/api/v1/auth/token", json={"api_key": wrong})
        assert refused.status_code == 401 and refused.json()["code"] == "unauthenticated"


async def test_pod_admin_keys_stay_in_its_tenant(fabric_app: RunningApp) -> None:
    pod_admin = fabric_app.auth("pod_admin", "pod-p")
    own = await new_key(fabric_app, "agent", None, pod_admin)
    assert own["tenant_id"] == "pod-p"
    other = await fabric_app.client.post(
        "/api/v1/auth/keys", json={"name": "x", "role": "agent", "tenant_id": "pod-q"}, headers=pod_admin
    )
    assert other.status_code == 403
    escalate = await fabric_app.client.post("/api/v1/auth/keys", json={"name": "x", "role": "admin"}, headers=pod_admin)
    assert escalate.status_code == 403
    foreign = await new_key(fabric_app, "agent", "pod-q")
    assert (await fabric_app.client.delete(f"/api/v1/auth/keys/{foreign['id']}", headers=pod_admin)).status_code == 404
    listed = (await fabric_app.client.get("/api/v1/auth/keys", headers=pod_admin)).json()["items"]
    assert {k["tenant_id"] for k in listed} == {"pod-p"}
    agent = await fabric_app.client.get("/api/v1/auth/keys", headers=fabric_app.auth("agent", "pod-p"))
    assert agent.status_code == 403


async def test_refresh_tokens_are_single_use(fabric_app: RunningApp) -> None:
    pair = await exchange(fabric_app, (await new_key(fabric_app, "viewer", "pod-r"))["key"])
    first = await fabric_app.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert first.status_code == 200 and first.json()["access_token"] != pair["access_token"]
    again = await fabric_app.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert again.status_code == 401


async def test_expired_key_cannot_be_exchanged(fabric_app: RunningApp) -> None:
    created = await new_key(fabric_app, "agent", "pod-e")
    async with fabric_app.fabric.engine.begin() as conn:
        await conn.execute(update(api_keys).where(api_keys.c.id == created["id"]).values(expires_at=_past()))
    assert (await fabric_app.client.post("/api/v1/auth/token", json={"api_key": created["key"]})).status_code == 401


def _past() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(minutes=1)


async def test_revocation_reaches_the_other_replica_within_a_second(
    tmp_path: Path, nats_url: str, postgres_url: str
) -> None:
    one = make_settings(tmp_path / "one", nats_url, database_url=postgres_url)
    two = make_settings(tmp_path / "two", nats_url, database_url=postgres_url)
    async with running_app(one) as a, running_app(two) as b:
        created = await new_key(a, "agent", "pod-rv")
        pair = await exchange(a, created["key"])
        assert (await b.client.get("/api/v1/tasks", headers=bearer(pair["access_token"]))).status_code == 200
        assert (await a.client.delete(f"/api/v1/auth/keys/{created['id']}", headers=a.auth())).status_code == 204
        await _until_status(b, pair["access_token"], 401)
        assert (await b.client.post("/api/v1/auth/token", json={"api_key": created["key"]})).status_code == 401

        token = a.token("agent", "pod-rv")
        claims = jwt.get_unverified_claims(token)
        revoke = await b.client.post(
            "/api/v1/auth/revocations", json={"jti": claims["jti"], "expires_at": claims["exp"]}, headers=b.auth()
        )
        assert revoke.status_code == 204
        await _until_status(a, token, 401)
        assert (await a.client.get("/api/v1/tasks", headers=a.auth("agent", "pod-rv"))).status_code == 200


async def _until_status(app: RunningApp, token: str, status: int) -> None:
    started = time.monotonic()
    while (await app.client.get("/api/v1/tasks", headers=bearer(token))).status_code != status:
        assert time.monotonic() - started < 1.0, "revocation took longer than a second"
        await asyncio.sleep(0.02)


async def test_custom_roles_are_permission_sets_shared_live(tmp_path: Path, nats_url: str, postgres_url: str) -> None:
    async with (
        running_app(make_settings(tmp_path / "a", nats_url, database_url=postgres_url)) as a,
        running_app(make_settings(tmp_path / "b", nats_url, database_url=postgres_url)) as b,
    ):
        put = await a.client.put("/api/v1/auth/roles/auditor", json={"permissions": ["tasks:read"]}, headers=a.auth())
        assert put.status_code == 200
        bad = await a.client.put("/api/v1/auth/roles/x1", json={"permissions": ["tasks:fly"]}, headers=a.auth())
        assert bad.status_code == 422 and bad.json()["code"] == "unknown_permission"
        builtin = await a.client.put("/api/v1/auth/roles/admin", json={"permissions": []}, headers=a.auth())
        assert builtin.status_code == 409
        pair = await exchange(a, (await new_key(a, "auditor", "pod-c"))["key"])
        await asyncio.sleep(0.2)
        assert (await b.client.get("/api/v1/tasks", headers=bearer(pair["access_token"]))).status_code == 200
        submit = await b.client.post("/api/v1/tasks", json=echo(new_job_id()), headers=bearer(pair["access_token"]))
        assert submit.status_code == 403
        pod_admin = await a.client.put(
            "/api/v1/auth/roles/r2", json={"permissions": []}, headers=a.auth("pod_admin", "p")
        )
        assert pod_admin.status_code == 403


async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path, nats_url: str) -> None:
    settings = make_settings(tmp_path, nats_url, http=HttpSettings(rate_limit_per_second=0.5, rate_limit_burst=3))
    async with running_app(settings) as app:
        auth = app.auth("viewer", "pod-l")
        statuses = [(await app.client.get("/api/v1/tasks", headers=auth)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await app.client.get("/api/v1/tasks", headers=auth)
        assert int(limited.headers["Retry-After"]) >= 1 and limited.json()["code"] == "rate_limited"
        assert (await app.client.get("/api/v1/tasks", headers=app.auth("viewer", "pod-other"))).status_code == 200


async def test_security_headers_and_cors_off_by_default(fabric_app: RunningApp) -> None:
    response = await fabric_app.client.get("/api/v1/tasks", headers=fabric_app.auth())
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY" and response.headers["Cache-Control"] == "no-store"
    preflight = await fabric_app.client.options(
        "/api/v1/tasks", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_allows_only_configured_origins(tmp_path: Path, nats_url: str) -> None:
    settings = make_settings(tmp_path, nats_url, http=HttpSettings(cors_origins="https://console.example"))
    async with running_app(settings) as app:
        ok = await app.client.options(
            "/api/v1/tasks", headers={"Origin": "https://console.example", "Access-Control-Request-Method": "POST"}
        )
        assert ok.headers["access-control-allow-origin"] == "https://console.example"
        other = await app.client.options(
            "/api/v1/tasks", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers


@pytest.fixture
def identity_provider() -> Iterator[tuple[str, Any]]:
    """A real HTTP server publishing a JWKS, as an external identity provider would."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_jwk = {**jwk.construct(pem, "RS256").to_dict(), "kid": "idp-1", "use": "sig"}
    body = json.dumps({"keys": [public_jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json", private
    server.shutdown()


async def test_rs256_tokens_from_a_jwks_identity_provider(
    tmp_path: Path, nats_url: str, identity_provider: tuple[str, Any]
) -> None:
    url, private = identity_provider
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    settings = make_settings(
        tmp_path,
        nats_url,
        jwt=SecuritySettings(algorithm="RS256", jwks_url=url, issuer="https://idp.example", audience="fabric"),
    )
    now = int(time.time())
    good = {
        "sub": "svc",
        "role": "agent",
        "tenant_id": "pod-i",
        "iss": "https://idp.example",
        "aud": "fabric",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "j1",
    }
    async with running_app(settings) as app:
        token = jwt.encode(good, pem, algorithm="RS256", headers={"kid": "idp-1"})
        assert (await app.client.get("/api/v1/tasks", headers=bearer(token))).status_code == 200
        for claims, headers in [
            ({**good, "aud": "other"}, {"kid": "idp-1"}),
            (good, {"kid": "idp-unknown"}),
            ({**good, "exp": now - 5}, {"kid": "idp-1"}),
        ]:
            refused = jwt.encode(claims, pem, algorithm="RS256", headers=headers)
            assert (await app.client.get("/api/v1/tasks", headers=bearer(refused))).status_code == 401
        hs = jwt.encode(good, "a-shared-secret-is-not-accepted-here-0000", algorithm="HS256", headers={"kid": "idp-1"})
        assert (await app.client.get("/api/v1/tasks", headers=bearer(hs))).status_code == 401


async def test_any_oversized_body_is_413_before_parsing(fabric_app: RunningApp) -> None:
    limit = fabric_app.fabric.settings.max_event_bytes + 64 * 1024
    big = b'{"api_key": "' + b"a" * limit + b'"}'
    declared = await fabric_app.client.post(
        "/api/v1/auth/token", content=big, headers={"Content-Type": "application/json"}
    )
    assert declared.status_code == 413 and declared.json()["code"] == "payload_too_large"

    async def chunks() -> Any:
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536

    streamed = await fabric_app.client.post("/api/v1/auth/keys", content=chunks(), headers=fabric_app.auth())
    assert streamed.status_code == 413


async def test_live_tenants_need_mfa_for_agent_zero_routes(fabric_app: RunningApp) -> None:
    c = fabric_app.client
    for pod, mode in (("pod-mfa-live", "LIVE"), ("pod-mfa-sandbox", "SANDBOX")):
        assert (await c.put(f"/api/v1/config/{pod}", headers=fabric_app.auth(), json={"mode": mode})).status_code == 200
    plain = fabric_app.auth("pod_admin", "pod-mfa-live")
    refused = await c.get("/api/v2/agent/budget", headers=plain)
    assert refused.status_code == 403 and refused.json()["code"] == "mfa_required"
    mfa = fabric_app.fabric.tokens.issue(role="pod_admin", subject="ops", tenant_id="pod-mfa-live", amr=["pwd", "mfa"])
    allowed = await c.get("/api/v2/agent/budget", headers=bearer(mfa))
    assert allowed.status_code == 200 and allowed.headers["x-fabric-mode"] == "LIVE"
    sandbox = await c.get("/api/v2/agent/budget", headers=fabric_app.auth("pod_admin", "pod-mfa-sandbox"))
    assert sandbox.status_code == 200
    # The refusal is in the audit trail, with who asked.
    await fabric_app.fabric.governance.audit.flush()
    trail = await c.get(
        "/api/v1/audit", headers=fabric_app.auth(), params={"action": "access_denied", "tenant_id": "pod-mfa-live"}
    )
    assert any(e["response"]["code"] == "mfa_required" and e["actor"] == "test" for e in trail.json()["items"])
