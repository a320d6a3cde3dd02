"""The bundled nats-server with authentication on: unauthenticated clients are refused, and a
registered agent's NATS user works on its own subjects and is refused by the server elsewhere."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from agent_fabric import names
from agent_fabric.settings import AgentsSettings, DatabaseSettings, NatsSettings, SecuritySettings, Settings
from tests.conftest import JWT_SECRET, RunningApp, running_app
from tests.support.agent_packages import good_values, write_package
from tests.support.flows import auth_as, new_pod, until


@pytest.fixture
async def bundled_app(tmp_path: Path) -> AsyncIterator[RunningApp]:
    packages = tmp_path / "packages"
    write_package(packages, "sec", **good_values("NatsSec"))
    settings = Settings(
        state_dir=tmp_path / "state",
        log_json=False,
        nats=NatsSettings(url=None),
        database=DatabaseSettings(url=None),
        jwt=SecuritySettings(secret=JWT_SECRET),
        agents=AgentsSettings(dir=str(packages)),
        shutdown_grace_seconds=5,
    )
    async with running_app(settings) as app:
        yield app


async def register(app: RunningApp, pod: str, name: str = "NatsSec") -> dict[str, Any]:
    minted = await app.client.post(
        "/api/v1/agents/discovery-tokens", headers=auth_as(app, "ops", "pod_admin", pod), json={}
    )
    body = {
        "agent_name": name,
        "agent_version": "1.0.0",
        "agent_type": "security",
        "discovery_token": minted.json()["discovery_token"],
    }
    done = await app.client.post("/api/v1/agents", json=body)
    assert done.status_code == 201, done.text
    return dict(done.json())


async def connect_as(creds: dict[str, Any], errors: list[str]) -> Client:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(
        creds["servers"],
        user=creds["user"],
        password=creds["password"],
        inbox_prefix=creds["inbox_prefix"],
        error_cb=on_error,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=5,
    )


async def refused_to_connect(url: str, **credentials: str) -> bool:
    try:
        client = await nats.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3, **credentials
        )
    except Exception as exc:
        return "authorization violation" in str(exc).lower()
    await client.close()
    return False


async def test_agent_nats_users_are_limited_to_their_own_subjects(bundled_app: RunningApp) -> None:
    app, pod = bundled_app, new_pod()
    url = app.fabric.agents.nats_users.server_url
    assert await refused_to_connect(url)  # no credentials: the bundled server says no
    assert await refused_to_connect(url, user="agent-fabric", password="guess")

    first, second = await register(app, pod), await register(app, pod, name="Other")
    creds, agent_id = first["nats"], first["agent"]["agent_id"]
    other_id = second["agent"]["agent_id"]
    assert creds["available"] is True and creds["user"] == agent_id
    assert "password" not in str(app.fabric.agents.registry)  # nothing leaks through the registry object

    errors: list[str] = []
    agent = await connect_as(creds, errors)
    fabric_nc = app.fabric.nc
    try:
        own: list[bytes] = []
        await agent.subscribe(f"agent.{agent_id}.>", cb=into(own, "data"))
        control: list[bytes] = []
        await agent.subscribe(names.agent_control_subject(agent_id), cb=into(control, "data"))
        await agent.flush()
        await agent.publish(f"agent.{agent_id}.heartbeat", b"alive")
        await until(lambda: own == [b"alive"], what="the agent's own subject")

        findings: list[bytes] = []
        sub = await fabric_nc.subscribe(names.tenant_topic(pod, "findings.security"), cb=into(findings, "data"))
        watch: list[str] = []
        spy = await fabric_nc.subscribe(">", cb=into(watch, "subject"))
        await fabric_nc.flush()
        # Core NATS delivers at most once (a busy test machine can drop a message to a slow
        # subscriber): what is shown is that the server lets it through, so publish until it does.
        async with asyncio.timeout(30):
            while not findings:
                await agent.publish(names.tenant_topic(pod, "findings.security"), b"finding")
                await agent.flush()
                await asyncio.sleep(0.5)
        assert set(findings) == {b"finding"}

        put = await app.client.put(f"/api/v1/agents/{agent_id}/config", headers=app.auth(), json={"log_level": "DEBUG"})
        assert put.status_code == 200
        await until(lambda: len(control) == 1, timeout=10, what="config change on the control subject")
        # An agent that was away reads its latest configuration from the AGENT_CONTROL stream.
        js = agent.jetstream(timeout=5)
        latest = await js.get_last_msg(names.AGENT_CONTROL_STREAM, names.agent_control_subject(agent_id), direct=True)
        assert latest.data == control[0]
        with pytest.raises(Exception):  # noqa: B017 - the server refuses it; nats-py times out or errors
            await js.get_last_msg(names.AGENT_CONTROL_STREAM, names.agent_control_subject(other_id), direct=True)

        errors.clear()  # the refused direct get above
        for forbidden in (f"agent.{other_id}.heartbeat", "agent.status.completed", "agent.execute.critical"):
            await agent.publish(forbidden, b"{}")
        await agent.flush()
        await until(lambda: len(errors) >= 3, what="the server refusing three publishes")
        assert all("permissions violation" in e.lower() for e in errors)
        await agent.subscribe("agent.status.*")
        await until(lambda: len(errors) >= 4, what="the server refusing a subscription")
        assert "subscription" in errors[-1].lower()
        await asyncio.sleep(0.2)
        assert not {s for s in watch if s.startswith((f"agent.{other_id}", "agent.status.", "agent.execute."))}
        await sub.unsubscribe()
        await spy.unsubscribe()
    finally:
        await agent.close()

    deleted = await app.client.delete(f"/api/v1/agents/{agent_id}", headers=app.auth())
    assert deleted.status_code == 204
    assert await refused_to_connect(url, user=creds["user"], password=creds["password"])
    other = await connect_as(second["nats"], [])
    await other.close()


def into(items: list[Any], attribute: str) -> Callable[[Any], Awaitable[None]]:
    async def on_msg(msg: Any) -> None:
        items.append(getattr(msg, attribute))

    return on_msg


async def test_agent_users_survive_a_restart(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path / "state",
        log_json=False,
        nats=NatsSettings(url=None),
        database=DatabaseSettings(url=None),
        jwt=SecuritySettings(secret=JWT_SECRET),
        agents=AgentsSettings(dir=str(tmp_path / "packages")),
        shutdown_grace_seconds=5,
    )
    pod = new_pod()
    async with running_app(settings) as app:
        body = {
            "agent_name": f"R-{uuid.uuid4().hex[:6]}",
            "agent_version": "1.0.0",
            "agent_type": "r",
            "tenant_id": pod,
        }
        creds = (await app.client.post("/api/v1/agents", json=body, headers=app.auth())).json()["nats"]
    async with running_app(settings) as app:
        # Same URL after the restart (the port is remembered) and the same user.
        assert app.fabric.agents.nats_users.server_url in creds["servers"]
        agent = await connect_as(creds, [])
        await agent.close()
