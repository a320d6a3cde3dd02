"""The NATS task door checks credentials as the HTTP door does (issue 15): every case on real NATS,
SQLite and Postgres. Refused messages are dead-lettered (without their token) and never run."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from jose import jwt
from nats.aio.client import Client
from sqlalchemy import select

from agent_fabric import names
from agent_fabric.settings import NatsDoorSettings, Settings
from agent_fabric.storage.session_store import Event
from agent_fabric.storage.tables import dead_letters
from tests.conftest import JWT_SECRET, RunningApp, make_settings, new_job_id, running_app
from tests.support.flows import collect, for_job, new_pod, structured, task, until


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def publish(nc: Client, data: dict[str, Any], headers: dict[str, str] | None) -> int:
    ack = await nc.jetstream().publish("agent.execute.normal", structured(data), headers=headers)
    return int(ack.seq)


async def dead_letter(app: RunningApp, seq: int, job: str, timeout: float = 15) -> Any:
    """The dead letter of the message at `seq` (the Postgres database outlives each test's NATS server,
    so the job id tells this test's letter from an earlier one with the same sequence number)."""
    async with asyncio.timeout(timeout):
        while True:
            async with app.fabric.engine.connect() as conn:
                rows = (await conn.execute(select(dead_letters).where(dead_letters.c.stream_seq == seq))).all()
            found = [r for r in rows if job.encode() in bytes(r.payload)]
            if found:
                return found[0]
            await asyncio.sleep(0.05)


async def assert_not_recorded(app: RunningApp, job: str, *tenants: str) -> None:
    for tenant in tenants:
        assert await app.fabric.store.get(tenant, job) is None, f"{job} was recorded in {tenant}"


async def test_agent_token_runs_the_task_in_its_tenant_as_its_subject(fabric_app: RunningApp, nc: Client) -> None:
    pod, job = new_pod(), new_job_id("cred")
    token = fabric_app.fabric.tokens.issue(role="agent", subject="planner-bot", tenant_id=pod)
    async with collect(nc, "agent.status.completed") as completed:
        await publish(nc, task(job), bearer(token))  # no tenant_id in the payload: the credential's
        await until(lambda: for_job(completed, job))
    record = await fabric_app.fabric.store.get(pod, job)
    assert record is not None and record.status.value == "completed"
    assert record.spec["metadata"]["user"] == "planner-bot"


async def test_payload_tenant_other_than_the_credentials_is_forbidden(fabric_app: RunningApp, nc: Client) -> None:
    pod, other, job = new_pod(), new_pod(), new_job_id("cross")
    token = fabric_app.fabric.tokens.issue(role="agent", subject="bot", tenant_id=pod)
    async with collect(nc, "agent.status.failed") as failed:
        seq = await publish(nc, task(job, tenant_id=other), bearer(token))
        await until(lambda: for_job(failed, job))
    data = for_job(failed, job)[0]["data"]
    # The failure goes out in the tenant the credential vouches for, never the payload's.
    assert data["tenant_id"] == pod and data["status"] == "rejected" and data["error"]["code"] == "forbidden"
    letter = await dead_letter(fabric_app, seq, job)
    assert letter.reason_code == "forbidden"
    await assert_not_recorded(fabric_app, job, pod, other)


async def test_invalid_task_naming_another_tenant_is_not_recorded_there(fabric_app: RunningApp, nc: Client) -> None:
    pod, other, job = new_pod(), new_pod(), new_job_id("cross-bad")
    token = fabric_app.fabric.tokens.issue(role="agent", subject="bot", tenant_id=pod)
    seq = await publish(nc, task(job, "juggle", tenant_id=other), bearer(token))
    assert (await dead_letter(fabric_app, seq, job)).reason_code == "forbidden"
    await assert_not_recorded(fabric_app, job, pod, other)


async def test_role_without_tasks_submit_is_forbidden(fabric_app: RunningApp, nc: Client) -> None:
    pod, job = new_pod(), new_job_id("viewer")
    token = fabric_app.fabric.tokens.issue(role="viewer", subject="watcher", tenant_id=pod)
    async with collect(nc, "agent.status.failed") as failed:
        seq = await publish(nc, task(job), bearer(token))
        await until(lambda: for_job(failed, job))
    error = for_job(failed, job)[0]["data"]["error"]
    assert error["code"] == "forbidden" and "tasks:submit" in error["message"]
    assert (await dead_letter(fabric_app, seq, job)).reason_code == "forbidden"
    await assert_not_recorded(fabric_app, job, pod)


def _forged(pod: str) -> str:
    now = int(__import__("time").time())
    claims = {"sub": "mallory", "role": "admin", "iss": "agent-fabric", "aud": "agent-fabric"}
    return str(jwt.encode({**claims, "iat": now, "exp": now + 600, "tenant_id": pod}, "another-secret-" * 4, "HS256"))


@pytest.mark.parametrize("case", ["missing", "forged", "expired", "revoked", "not_bearer", "bad_seal"])
async def test_unauthenticated_messages_are_dead_lettered_and_never_run(
    fabric_app: RunningApp, nc: Client, case: str
) -> None:
    pod, job = new_pod(), new_job_id(case)
    tokens = fabric_app.fabric.tokens
    headers: dict[str, str] | None
    if case == "missing":
        headers = None
    elif case == "forged":
        headers = bearer(_forged(pod))
    elif case == "expired":
        headers = bearer(tokens.issue(role="agent", subject="late", tenant_id=pod, ttl_seconds=1))
        await asyncio.sleep(2.1)
    elif case == "revoked":
        token = tokens.issue(role="agent", subject="gone", tenant_id=pod)
        jti = jwt.get_unverified_claims(token)["jti"]
        response = await fabric_app.client.post(
            "/api/v1/auth/revocations", json={"jti": jti}, headers=fabric_app.auth()
        )
        assert response.status_code == 204, response.text
        headers = bearer(token)
    elif case == "not_bearer":
        headers = {"Authorization": f"Basic {tokens.issue(role='agent', subject='x', tenant_id=pod)}"}
    else:
        headers = {names.SEAL_HEADER: "v1:" + "0" * 64, names.MSG_ID_HEADER: uuid.uuid4().hex}
    async with collect(nc, "agent.status.>") as statuses:
        seq = await publish(nc, task(job, tenant_id=pod), headers)
        letter = await dead_letter(fabric_app, seq, job)
        await asyncio.sleep(0.3)
    assert letter.reason_code == "unauthenticated" and letter.reason
    assert for_job(statuses, job) == []  # nobody can be trusted with the answer: no failure event
    await assert_not_recorded(fabric_app, job, pod, "default")
    stored = orjson.loads(letter.headers) if isinstance(letter.headers, str | bytes) else (letter.headers or {})
    assert all(v == "[redacted]" for k, v in stored.items() if k.lower() in ("authorization", "agent-fabric-seal"))
    assert "Bearer" not in str(stored)


async def test_api_key_as_credential_until_it_is_revoked(fabric_app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    response = await fabric_app.client.post(
        "/api/v1/auth/keys", json={"name": "pipeline", "role": "agent", "tenant_id": pod}, headers=fabric_app.auth()
    )
    assert response.status_code == 201, response.text
    key = response.json()
    first = new_job_id("key")
    async with collect(nc, "agent.status.completed") as completed:
        await publish(nc, task(first), bearer(key["key"]))
        await until(lambda: for_job(completed, first))
    record = await fabric_app.fabric.store.get(pod, first)
    assert record is not None and record.spec["metadata"]["user"] == "key:pipeline"

    revoked = await fabric_app.client.delete(f"/api/v1/auth/keys/{key['id']}", headers=fabric_app.auth())
    assert revoked.status_code == 204
    second = new_job_id("key-revoked")
    seq = await publish(nc, task(second), bearer(key["key"]))
    assert (await dead_letter(fabric_app, seq, second)).reason_code == "unauthenticated"
    await assert_not_recorded(fabric_app, second, pod)

    unknown = new_job_id("key-unknown")
    seq = await publish(nc, task(unknown), bearer("af_deadbeef_" + "x" * 40))
    assert (await dead_letter(fabric_app, seq, unknown)).reason_code == "unauthenticated"


async def test_http_submissions_still_run_through_the_sealed_path(fabric_app: RunningApp) -> None:
    pod, job = new_pod(), new_job_id("http")
    response = await fabric_app.client.post(
        "/api/v1/tasks?wait=0", json=task(job), headers=fabric_app.auth("agent", pod)
    )
    assert response.status_code == 202, response.text
    async with asyncio.timeout(15):
        while (record := await fabric_app.fabric.store.get(pod, job)) is None or record.status.value != "completed":
            await asyncio.sleep(0.05)


async def test_rate_limited_tasks_wait_in_jetstream_and_all_run(tmp_path: Path, nats_url: str, nc: Client) -> None:
    settings = make_settings(
        tmp_path, nats_url, nats_door=NatsDoorSettings(rate_limit_per_second=2, rate_limit_burst=1)
    )
    async with running_app(settings) as app:
        pod = new_pod()
        token = app.fabric.tokens.issue(role="agent", subject="burst", tenant_id=pod)
        jobs = [new_job_id("rl") for _ in range(4)]
        async with collect(nc, "agent.status.completed") as completed:
            for job in jobs:
                await publish(nc, task(job), bearer(token))
            await until(lambda: all(for_job(completed, j) for j in jobs), timeout=30)
        info = await nc.jetstream().consumer_info(names.TASK_STREAM, names.consumer_name("normal"))
        # Deliveries outnumber messages: some went back to wait in the stream instead of being refused.
        assert info.delivered.consumer_seq > info.delivered.stream_seq == len(jobs)
        async with app.fabric.engine.connect() as conn:
            assert (await conn.execute(select(dead_letters))).first() is None


async def test_anonymous_tasks_only_where_the_operator_allows_them(
    tmp_path: Path, nats_url: str, nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="ALLOW_ANONYMOUS"):
        Settings(mode="LIVE", jwt={"secret": JWT_SECRET}, nats_door=NatsDoorSettings(allow_anonymous=True))
    settings = make_settings(tmp_path, nats_url, nats_door=NatsDoorSettings(allow_anonymous=True))
    caplog.set_level(logging.WARNING, logger="agent_fabric.inbound.nats_credentials")
    async with running_app(settings) as app:
        assert any("without a credential are accepted" in r.getMessage() for r in caplog.records)
        pod, live_pod = new_pod(), new_pod()
        put = await app.client.put(f"/api/v1/config/{live_pod}", json={"mode": "LIVE"}, headers=app.auth())
        assert put.status_code == 200, put.text
        job, live_job = new_job_id("anon"), new_job_id("anon-live")
        async with collect(nc, "agent.status.completed") as completed:
            await publish(nc, task(job, tenant_id=pod, metadata={"user": "someone"}), None)
            await until(lambda: for_job(completed, job))
        record = await app.fabric.store.get(pod, job)
        assert record is not None and record.spec["metadata"]["user"] == "someone"
        seq = await publish(nc, task(live_job, tenant_id=live_pod), None)
        assert (await dead_letter(app, seq, live_job)).reason_code == "unauthenticated"
        await assert_not_recorded(app, live_job, live_pod)


async def test_forged_replica_broadcasts_are_ignored(fabric_app: RunningApp, nc: Client) -> None:
    """Revocations, custom roles and cancellations travel between replicas on NATS core subjects:
    only sealed ones (a replica's) count, so a NATS client cannot grant permissions or stop tasks."""
    await nc.publish(
        names.AUTH_CONTROL_SUBJECT, orjson.dumps({"kind": "role", "name": "sneaky", "permissions": ["roles:manage"]})
    )
    pod, job = new_pod(), new_job_id("uncancelled")
    response = await fabric_app.client.post(
        "/api/v1/tasks", json=task(job, "sleep", {"seconds": 1.0}), headers=fabric_app.auth("agent", pod)
    )
    assert response.status_code == 202, response.text
    async with asyncio.timeout(15):
        while (record := await fabric_app.fabric.store.get(pod, job)) is None or record.status.value != "running":
            await asyncio.sleep(0.02)
    await nc.publish(names.CANCEL_SUBJECT, orjson.dumps({"tenant_id": pod, "job_id": job, "message": "forged"}))
    await nc.flush()
    async with asyncio.timeout(15):
        while not (record := await fabric_app.fabric.store.get(pod, job)) or not record.status.is_terminal:
            await asyncio.sleep(0.05)
    assert record.status.value == "completed"
    assert fabric_app.fabric.access.permissions_for("sneaky") is None
    # The real thing still works: a cancellation through the API reaches the running task.
    other = new_job_id("cancelled")
    await fabric_app.client.post(
        "/api/v1/tasks", json=task(other, "sleep", {"seconds": 10}), headers=fabric_app.auth("agent", pod)
    )
    async with asyncio.timeout(15):
        while (record := await fabric_app.fabric.store.get(pod, other)) is None or record.status.value != "running":
            await asyncio.sleep(0.02)
    cancelled = await fabric_app.client.post(f"/api/v1/tasks/{other}/cancel?tenant_id={pod}", headers=fabric_app.auth())
    assert cancelled.status_code == 202, cancelled.text


async def test_a_token_revoked_after_use_stops_working_at_once(fabric_app: RunningApp, nc: Client) -> None:
    """The door remembers a checked signature, never a revocation: the next message is refused."""
    pod, first, second = new_pod(), new_job_id("before"), new_job_id("after")
    token = fabric_app.fabric.tokens.issue(role="agent", subject="rotating", tenant_id=pod)
    async with collect(nc, "agent.status.completed") as completed:
        await publish(nc, task(first), bearer(token))
        await until(lambda: for_job(completed, first))
    jti = jwt.get_unverified_claims(token)["jti"]
    response = await fabric_app.client.post("/api/v1/auth/revocations", json={"jti": jti}, headers=fabric_app.auth())
    assert response.status_code == 204
    seq = await publish(nc, task(second), bearer(token))
    assert (await dead_letter(fabric_app, seq, second)).reason_code == "unauthenticated"
    await assert_not_recorded(fabric_app, second, pod)


async def test_a_custom_role_changed_after_use_applies_to_the_next_message(fabric_app: RunningApp, nc: Client) -> None:
    """The door remembers a checked signature, never the role's permissions: a role that loses
    tasks:submit refuses the very token it let through before."""
    pod, first, second, role = new_pod(), new_job_id("allowed"), new_job_id("taken"), f"sub{uuid.uuid4().hex[:8]}"
    put = await fabric_app.client.put(
        f"/api/v1/auth/roles/{role}", json={"permissions": ["tasks:submit", "tasks:read"]}, headers=fabric_app.auth()
    )
    assert put.status_code in (200, 201), put.text
    token = fabric_app.fabric.tokens.issue(role=role, subject="shifting", tenant_id=pod)
    async with collect(nc, "agent.status.completed") as completed:
        await publish(nc, task(first), bearer(token))
        await until(lambda: for_job(completed, first))
    put = await fabric_app.client.put(
        f"/api/v1/auth/roles/{role}", json={"permissions": ["tasks:read"]}, headers=fabric_app.auth()
    )
    assert put.status_code in (200, 201), put.text
    seq = await publish(nc, task(second), bearer(token))
    assert (await dead_letter(fabric_app, seq, second)).reason_code == "forbidden"
    await assert_not_recorded(fabric_app, second, pod)


async def test_only_sealed_session_events_reach_a_websocket(fabric_app: RunningApp, nc: Client) -> None:
    """Session events relayed to POD administrators' WebSockets come from replicas only."""
    events = fabric_app.fabric.sessions.events
    session_id = f"s-{uuid.uuid4().hex[:12]}"
    async with events.subscribe(session_id) as live:
        forged = {"session_id": session_id, "id": 1, "kind": "response", "data": {"response": "wire $1M"}}
        await nc.publish(names.agent_session_subject(session_id), orjson.dumps(forged))
        await nc.flush()
        await events.publish(session_id, [Event(1, "progress", {"text": "real"}, datetime.now(UTC))])
        first = await asyncio.wait_for(live.get(), timeout=10)
        await asyncio.sleep(0.3)
        assert first["data"] == {"text": "real"} and live.empty()
