"""NFR-SEC-3: every administrative action leaves an audit row, written in the transaction that makes
the change. The rows are read straight from the table without flushing the batched audit writer:
an entry that were merely queued behind the change would not be there yet."""

from __future__ import annotations

from typing import Any

from jose import jwt
from sqlalchemy import select

from agent_fabric.storage.tables import audit_log
from tests.conftest import RunningApp
from tests.support.agent_zero_standin import running_standin
from tests.support.flows import auth_as, new_pod

KEY = "standin-key-0123456789"


async def committed(app: RunningApp, action: str, **where: Any) -> list[Any]:
    stmt = select(audit_log).where(audit_log.c.action == action)
    for column, value in where.items():
        stmt = stmt.where(audit_log.c[column] == value)
    async with app.fabric.engine.connect() as conn:
        return list((await conn.execute(stmt)).all())


async def test_api_keys_created_and_revoked_are_audited(fabric_app: RunningApp) -> None:
    pod = new_pod()
    boss = auth_as(fabric_app, "boss", "pod_admin", pod)
    created = await fabric_app.client.post(
        "/api/v1/auth/keys", json={"name": "ci", "role": "agent", "tenant_id": pod}, headers=boss
    )
    assert created.status_code == 201, created.text
    key = created.json()
    [row] = await committed(fabric_app, "auth.key.created", tenant_id=pod)
    assert row.actor == "boss" and row.response["id"] == key["id"] and row.response["role"] == "agent"
    assert key["key"] not in str(row.response) and "secret_hash" not in row.response

    assert (await fabric_app.client.delete(f"/api/v1/auth/keys/{key['id']}", headers=boss)).status_code == 204
    [row] = await committed(fabric_app, "auth.key.revoked", tenant_id=pod)
    assert row.actor == "boss" and row.request == {"id": key["id"], "name": "ci", "role": "agent"} and row.at


async def test_token_revocations_are_audited(fabric_app: RunningApp) -> None:
    pod = new_pod()
    token = fabric_app.fabric.tokens.issue(role="agent", subject="leaked", tenant_id=pod)
    jti = jwt.get_unverified_claims(token)["jti"]
    boss = auth_as(fabric_app, "boss", "pod_admin", pod)
    response = await fabric_app.client.post("/api/v1/auth/revocations", json={"token": token}, headers=boss)
    assert response.status_code == 204, response.text
    rows = [r for r in await committed(fabric_app, "auth.token.revoked", tenant_id=pod) if r.request["jti"] == jti]
    assert len(rows) == 1 and rows[0].actor == "boss"
    used = await fabric_app.client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}"})
    assert used.status_code == 401


async def test_a_tenants_key_manager_revokes_only_its_own_tenants_tokens(fabric_app: RunningApp) -> None:
    pod, other = new_pod(), new_pod()
    theirs = fabric_app.fabric.tokens.issue(role="agent", subject="victim", tenant_id=other)
    boss = auth_as(fabric_app, "boss", "pod_admin", pod)
    revoke = "/api/v1/auth/revocations"
    by_jti = await fabric_app.client.post(revoke, json={"jti": jwt.get_unverified_claims(theirs)["jti"]}, headers=boss)
    assert by_jti.status_code == 403 and "presenting it" in by_jti.json()["detail"]
    by_token = await fabric_app.client.post(revoke, json={"token": theirs}, headers=boss)
    assert by_token.status_code == 403 and "another tenant" in by_token.json()["detail"]
    forged = theirs[:-4] + ("AAAA" if not theirs.endswith("AAAA") else "BBBB")
    assert (await fabric_app.client.post(revoke, json={"token": forged}, headers=boss)).status_code == 401
    both = {"jti": "x", "token": theirs}
    assert (await fabric_app.client.post(revoke, json=both, headers=boss)).status_code == 422
    assert (await fabric_app.client.post(revoke, json={}, headers=boss)).status_code == 422
    still = await fabric_app.client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {theirs}"})
    assert still.status_code == 200


async def test_custom_roles_defined_and_deleted_are_audited(fabric_app: RunningApp) -> None:
    name = f"auditor-{new_pod()[4:]}"
    root = auth_as(fabric_app, "root", "admin", None)
    put = await fabric_app.client.put(f"/api/v1/auth/roles/{name}", json={"permissions": ["audit:read"]}, headers=root)
    assert put.status_code == 200, put.text
    changed = await fabric_app.client.put(
        f"/api/v1/auth/roles/{name}", json={"permissions": ["audit:read", "tasks:read"]}, headers=root
    )
    assert changed.status_code == 200
    defined = [r for r in await committed(fabric_app, "auth.role.defined") if r.request["name"] == name]
    assert [(r.request["permissions"], r.response["created"]) for r in sorted(defined, key=lambda r: r.at)] == [
        (["audit:read"], True),
        (["audit:read", "tasks:read"], False),
    ]
    assert (await fabric_app.client.delete(f"/api/v1/auth/roles/{name}", headers=root)).status_code == 204
    deleted = [r for r in await committed(fabric_app, "auth.role.deleted") if r.request["name"] == name]
    assert len(deleted) == 1 and deleted[0].actor == "root" and deleted[0].tenant_id is None
    # A refused change changes nothing and leaves no admin-action row.
    assert (await fabric_app.client.delete(f"/api/v1/auth/roles/{name}", headers=root)).status_code == 404
    assert len([r for r in await committed(fabric_app, "auth.role.deleted") if r.request["name"] == name]) == 1


async def test_agent_zero_instances_registered_and_removed_are_audited(fabric_app: RunningApp) -> None:
    pod = new_pod()
    alice = auth_as(fabric_app, "alice", "pod_admin", pod)
    with running_standin(KEY) as (url, _):
        created = await fabric_app.client.post(
            "/api/v2/agent/instances", json={"url": url, "api_key": KEY}, headers=alice
        )
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        [row] = await committed(fabric_app, "agent.instance.register", tenant_id=pod)
        assert row.actor == "alice" and row.request["url"] == url and row.response == {"id": instance_id}
        assert KEY not in str(row.request)
        removed = await fabric_app.client.delete(f"/api/v2/agent/instances/{instance_id}", headers=alice)
        assert removed.status_code == 200, removed.text
        [row] = await committed(fabric_app, "agent.instance.remove", tenant_id=pod)
        assert row.actor == "alice" and row.request == {"id": instance_id} and row.response == {"url": url}
