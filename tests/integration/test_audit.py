"""The audit trail: query and paging, redaction, append-only, and no loss while the database is away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import delete, func, select, text, update

from agent_fabric.audit.entries import AuditEntry
from agent_fabric.settings import AuditSettings, DatabaseSettings, Settings
from agent_fabric.storage.engine import migrate_async
from agent_fabric.storage.tables import audit_log
from tests.conftest import RunningApp, make_settings, running_app
from tests.support import services
from tests.support.flows import audit, auth_as, new_pod, until


async def test_query_filters_and_pages_newest_first(fabric_app: RunningApp) -> None:
    pod = new_pod()
    writer = fabric_app.fabric.governance.audit
    for i in range(7):
        writer.record(AuditEntry("test.event", f"actor-{i % 2}", pod, "SANDBOX", request={"i": i}, cost_usd=0.5))
    writer.record(AuditEntry("test.other", "actor-0", pod, "SANDBOX", session_id="s-1"))
    await writer.flush()
    c, admin = fabric_app.client, fabric_app.auth()
    first = (await c.get(f"/api/v1/audit?tenant_id={pod}&action=test.event&limit=3", headers=admin)).json()
    assert [e["request"]["i"] for e in first["items"]] == [6, 5, 4] and first["next"]
    second = (
        await c.get(f"/api/v1/audit?tenant_id={pod}&action=test.event&limit=3&cursor={first['next']}", headers=admin)
    ).json()
    assert [e["request"]["i"] for e in second["items"]] == [3, 2, 1]
    third = (
        await c.get(f"/api/v1/audit?tenant_id={pod}&action=test.event&limit=3&cursor={second['next']}", headers=admin)
    ).json()
    assert [e["request"]["i"] for e in third["items"]] == [0] and third["next"] is None
    by_actor = await audit(fabric_app, tenant_id=pod, actor="actor-1")
    assert len(by_actor) == 3 and all(e["cost_usd"] == 0.5 for e in by_actor)
    prefix = await audit(fabric_app, tenant_id=pod, action="test.")
    assert len(prefix) == 8
    session = await audit(fabric_app, tenant_id=pod, session_id="s-1")
    assert [e["action"] for e in session] == ["test.other"] and session[0]["mode"] == "SANDBOX"
    future = await audit(fabric_app, tenant_id=pod, since="2999-01-01T00:00:00Z")
    assert future == []
    # A POD admin sees its own POD only, on both routes; a viewer none of it.
    pod_admin = auth_as(fabric_app, "alice", "pod_admin", pod)
    own = (await c.get("/api/v2/agent/audit?action=test.other", headers=pod_admin)).json()
    assert [e["action"] for e in own["items"]] == ["test.other"] and own["mode"] == "SANDBOX"
    assert (await c.get(f"/api/v1/audit?tenant_id={new_pod()}", headers=pod_admin)).status_code == 403
    assert (await c.get("/api/v1/audit", headers=auth_as(fabric_app, "v", "viewer", pod))).status_code == 403


async def test_secrets_never_reach_the_trail(fabric_app: RunningApp) -> None:
    pod = new_pod()
    response = await fabric_app.client.put(
        f"/api/v1/config/{pod}",
        headers=fabric_app.auth(),
        json={"agent_zero": {"url": "https://svc:hunter2@a0.example.com/"}},
    )
    assert response.status_code == 200
    writer = fabric_app.fabric.governance.audit
    writer.record(
        AuditEntry(
            "test.secret",
            "x",
            pod,
            "LIVE",
            request={"api_key": "k-123", "headers": {"Authorization": "Bearer abc.def.ghi"}, "tokens": 42},
            response={"note": "used Bearer zzz.yyy.xxx and eyJhbGciOiJIUzI1.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"},
        )
    )
    entries = await audit(fabric_app, tenant_id=pod)
    raw = str(entries)
    assert "hunter2" not in raw and "k-123" not in raw and "abc.def.ghi" not in raw and "zzz.yyy.xxx" not in raw
    assert "eyJzdWIiOiJ4In0" not in raw
    secret = next(e for e in entries if e["action"] == "test.secret")
    assert secret["request"]["tokens"] == 42 and secret["request"]["api_key"] == "[redacted]"


async def test_the_table_is_append_only(fabric_app: RunningApp) -> None:
    writer = fabric_app.fabric.governance.audit
    writer.record(AuditEntry("test.keep", "x", new_pod(), "SANDBOX"))
    await writer.flush()
    for statement in (update(audit_log).values(actor="someone-else"), delete(audit_log)):
        with pytest.raises(Exception, match="append-only"):
            async with fabric_app.fabric.engine.begin() as conn:
                await conn.execute(statement)


@pytest.fixture
async def own_database() -> AsyncIterator[tuple[str, str]]:
    """(url, name) of a migrated database this test may switch off and on."""
    name = services.throwaway_name()
    admin = await asyncpg.connect(services.POSTGRES_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = services.asyncpg_url(services.with_database(services.POSTGRES_DSN, name))
    await migrate_async(Settings(database=DatabaseSettings(url=url)))
    try:
        yield url, name
    finally:
        admin = await asyncpg.connect(services.POSTGRES_DSN)
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def database_available(name: str, available: bool) -> None:
    """Refuse (or allow) new connections to the database and cut the ones it has."""
    admin = await asyncpg.connect(services.POSTGRES_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(available).lower()}')
        if not available:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await admin.close()


async def count_entries(url: str, tag: str) -> int:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = $1", tag))
    finally:
        await conn.close()


async def test_decisions_made_while_the_database_is_away_are_written_when_it_returns(
    tmp_path: Path, nats_url: str, own_database: tuple[str, str]
) -> None:
    url, name = own_database
    settings = make_settings(tmp_path, nats_url, database_url=url, audit=AuditSettings(flush_interval_ms=50))
    async with running_app(settings) as app:
        pod = new_pod()
        agent = auth_as(app, "bot", "agent", pod)
        await database_available(name, False)
        try:
            # Policy decisions need no database: the hot path keeps answering while the trail waits.
            for i in range(25):
                r = await app.client.post(
                    "/api/v1/policies/check", headers=agent, json={"action": f"tool:t{i}", "context": {}}
                )
                assert r.status_code == 200
            writer = app.fabric.governance.audit
            await until(lambda: app.fabric.metrics.audit_write_failures._value.get() > 0, what="a failed write")
            assert writer.pending >= 25
        finally:
            await database_available(name, True)
        await until(lambda: writer.pending == 0, timeout=20, what="the backlog written")
    async with asyncio.timeout(5):
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await conn.fetch(
                "SELECT request->>'action' AS action FROM audit_log"
                " WHERE tenant_id = $1 AND action = 'policy.decision'",
                pod,
            )
        finally:
            await conn.close()
    assert sorted(r["action"] for r in rows) == sorted(f"tool:t{i}" for i in range(25))


async def test_shutdown_with_the_database_away_spools_and_the_next_start_writes(
    tmp_path: Path, nats_url: str, own_database: tuple[str, str]
) -> None:
    url, name = own_database
    tag = f"test.spool.{uuid.uuid4().hex[:6]}"
    settings = make_settings(tmp_path, nats_url, database_url=url, shutdown_grace_seconds=0.5)
    async with running_app(settings) as app:
        await database_available(name, False)
        for i in range(10):
            app.fabric.governance.audit.record(AuditEntry(tag, "x", "pod-spool", "SANDBOX", request={"i": i}))
    try:
        spooled = list((tmp_path / "audit-spool").glob("*.jsonl"))
        assert spooled and sum(len(p.read_bytes().splitlines()) for p in spooled) >= 10
    finally:
        await database_available(name, True)
    assert await count_entries(url, tag) == 0
    async with running_app(settings) as app:
        await until(lambda: not list((tmp_path / "audit-spool").glob("*.jsonl")), what="the spool replayed")
        async with app.fabric.engine.connect() as conn:
            written = (await conn.execute(select(func.count()).where(audit_log.c.action == tag))).scalar()
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    assert written == 10
