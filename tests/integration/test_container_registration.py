"""Registration of an agent whose package asks for isolation level `container` on this fabric (no
container runtime): it succeeds, and says so at once, in the answer's `notices`, in the registry's
status reason and history, in the audit and in the log; both registration paths (discovery token,
operator directly). Real NATS and SQLite."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_fabric.settings import AgentsSettings
from tests.conftest import RunningApp, make_settings, running_app
from tests.integration.test_agents_api import mint, register
from tests.support.agent_packages import good_values, write_package
from tests.support.flows import audit, new_pod

CODE = "container_runtime_unavailable"


@pytest.fixture
async def app(tmp_path: Path, nats_url: str) -> AsyncIterator[RunningApp]:
    packages = tmp_path / "packages"
    packages.mkdir()
    async with running_app(make_settings(tmp_path, nats_url, agents=AgentsSettings(dir=str(packages)))) as running:
        yield running


async def discovered(app: RunningApp, folder: str, **hints: str) -> str:
    """A package on disk, scanned into the catalogue; its name."""
    name = f"Box-{uuid.uuid4().hex[:8]}"
    write_package(app.fabric.agents.discovery.dirs[0], folder, **good_values(name), **hints)
    scan = await app.client.post("/api/v1/agents/discover", headers=app.auth())
    assert scan.status_code == 200, scan.text
    return name


async def recorded(app: RunningApp, agent_id: str) -> dict[str, Any]:
    response = await app.client.get(f"/api/v1/agents/{agent_id}", headers=app.auth())
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_container_isolation_is_noticed_at_registration(
    app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent_fabric.agents.registration")
    c, pod = app.client, new_pod()
    name = await discovered(app, "boxed", AGENT_ISOLATION="container")

    done = await register(app, await mint(app, pod), name)
    assert done.status_code == 201, done.text  # registration still succeeds
    body = done.json()
    agent_id = body["agent"]["agent_id"]
    assert body["agent"]["status"] == "registered" and body["credentials"]["api_key"]
    assert [n["code"] for n in body["notices"]] == [CODE]
    message = body["notices"][0]["message"]
    assert "container runtime" in message and f"/api/v1/agents/{agent_id}/kubernetes" in message

    record = await recorded(app, agent_id)
    assert message in record["status_reason"] and record["status_reason"].startswith(f"registered in tenant {pod}")
    assert record["history"][-1]["to"] == "registered" and message in record["history"][-1]["reason"]
    entries = await audit(app, action="agent.registered", tenant_id=pod)
    assert [e["response"]["notices"] for e in entries] == [body["notices"]]
    logged = [r for r in caplog.records if getattr(r, "agent_id", None) == agent_id]
    assert [(r.levelno, getattr(r, "code", None)) for r in logged] == [(logging.WARNING, CODE)]

    manifests = await c.get(
        f"/api/v1/agents/{agent_id}/kubernetes", headers=app.auth(), params={"image": "registry.example/box:1"}
    )
    assert manifests.status_code == 200, manifests.text
    assert [m["kind"] for m in manifests.json()["items"]] == ["Deployment", "NetworkPolicy"]

    # An operator registering the same package directly (the catalogue offers it again) hears the same.
    await c.post("/api/v1/agents/discover", headers=app.auth())
    direct = await c.post(
        "/api/v1/agents",
        headers=app.auth(),
        json={"agent_name": name, "agent_version": "1.0.0", "agent_type": "security", "tenant_id": pod},
    )
    assert direct.status_code == 201, direct.text
    direct_id = direct.json()["agent"]["agent_id"]
    assert direct_id != agent_id and [n["code"] for n in direct.json()["notices"]] == [CODE]
    assert direct.json()["notices"][0]["message"] in (await recorded(app, direct_id))["status_reason"]


async def test_process_isolation_and_external_agents_register_without_notices(app: RunningApp) -> None:
    pod = new_pod()
    name = await discovered(app, "plain")
    done = await register(app, await mint(app, pod), name)
    assert done.status_code == 201, done.text
    assert done.json()["notices"] == []
    record = await recorded(app, done.json()["agent"]["agent_id"])
    assert "container" not in record["status_reason"]

    external = await app.client.post(
        "/api/v1/agents",
        headers=app.auth(),
        json={"agent_name": "Elsewhere", "agent_version": "1.0.0", "agent_type": "planner", "tenant_id": pod},
    )
    assert external.status_code == 201 and external.json()["agent"]["runtime"] == "external"
    assert external.json()["notices"] == []  # the fabric starts none of its processes: nothing to say
