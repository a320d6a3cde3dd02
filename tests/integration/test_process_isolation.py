"""Isolation level `process` holds on this host (cgroup v1/v2 limits, or rlimits), shown against
the same agent with isolation `none`: memory limit, CPU limit, fork bomb, working directory and
a scrubbed environment. Real agent processes; SQLite and real NATS."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_fabric.agents import cgroups
from tests.conftest import RunningApp, new_job_id, running_app
from tests.integration.test_process_agents import FAST, process_settings
from tests.support.flows import new_pod, task_status, until
from tests.support.process_agents import package, process_task, register

SECRET_VAR = "FABRIC_TEST_DB_PASSWORD"


@pytest.fixture
async def app(tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningApp]:
    monkeypatch.setenv(SECRET_VAR, "s3cret-value")  # in the fabric's environment, as a real secret would be
    (tmp_path / "packages").mkdir()
    trusting = FAST.model_copy(update={"allow_unisolated": True})  # to show what `none` leaves open
    async with running_app(process_settings(tmp_path, nats_url, None, None, process=trusting)) as running:
        yield running


async def hostile(app: RunningApp, **hints: str) -> tuple[str, str]:
    pod = new_pod()
    path = package(app.fabric.settings.state_dir / "packages", "hostile", **hints)
    return await register(app, path, pod), pod


async def run(
    app: RunningApp, agent_id: str, pod: str, kind: str, inp: dict[str, Any], timeout: float = 60
) -> dict[str, Any]:
    job = new_job_id(kind)
    body = {**process_task(job, agent_id, kind, inp), "tenant_id": pod}
    response = await app.client.post("/api/v1/tasks", headers=app.auth(), json=body)
    assert response.status_code == 202, response.text
    return await task_status(app, job, {"completed", "failed", "timed_out", "rejected"}, pod, timeout=timeout)


async def test_memory_hog_is_stopped_at_its_limit_and_fails_with_resource_limit(app: RunningApp) -> None:
    limited, pod = await hostile(app, AGENT_MEMORY_MB="64")
    record = await run(app, limited, pod, "hog", {"mb": 512})
    assert record["status"] == "failed", record
    if cgroups.detect() is not None:  # the kernel's OOM kill in the agent's control group
        assert record["error"]["code"] == "resource_limit", record
    else:  # rlimits: the allocation fails inside the agent
        assert record["error"]["code"] in ("resource_limit", "agent_error"), record
    assert (await app.client.get("/health")).status_code == 200  # the fabric never noticed

    free, pod2 = await hostile(app, AGENT_ISOLATION="none")
    unfenced = await run(app, free, pod2, "hog", {"mb": 128})
    assert unfenced["status"] == "completed" and unfenced["result"] == {"allocated_mb": 128}


@pytest.mark.skipif(cgroups.detect() is None, reason="CPU limits need a control group (rlimits cannot throttle)")
async def test_cpu_spinner_is_throttled_to_its_share(app: RunningApp) -> None:
    agent_id, pod = await hostile(app, AGENT_CPU_CORES="0.2")
    record = await run(app, agent_id, pod, "spin", {"seconds": 2.5})
    assert record["status"] == "completed", record
    result = record["result"]
    assert result["cpu"] / result["wall"] < 0.45, result  # 0.2 cores, with scheduler slack


async def test_fork_bomb_is_contained(app: RunningApp) -> None:
    agent_id, pod = await hostile(app, AGENT_MAX_PIDS="32")
    record = await run(app, agent_id, pod, "fork", {"seconds": 2})
    assert record["status"] == "completed", record
    if cgroups.detect() is not None:
        assert record["result"]["refused"] > 0 and record["result"]["forked"] < 32, record
    assert (await app.client.get("/health")).status_code == 200


async def test_working_directory_and_scrubbed_environment(app: RunningApp) -> None:
    agent_id, pod = await hostile(app)
    record = await run(app, agent_id, pod, "environ", {})
    assert record["status"] == "completed", record
    result = record["result"]
    assert SECRET_VAR not in result["names"]
    protocol = {n for n in result["names"] if n.startswith("AGENT_FABRIC_")}
    assert protocol == {
        "AGENT_FABRIC_AGENT_ID",
        "AGENT_FABRIC_AGENT_CONFIG",
        "AGENT_FABRIC_HEARTBEAT_SECONDS",
        "AGENT_FABRIC_PACKAGE_DIR",
        "AGENT_FABRIC_PROTOCOL",
    }
    assert {"PATH", "HOME", "TMPDIR"} <= set(result["names"])
    workdir = Path(result["cwd"])
    assert workdir.parent == (app.fabric.settings.state_dir / "agent-work").resolve() and result["home"] == str(workdir)
    assert (workdir / "written.txt").read_text() == "hello"
    stop = await app.client.post(f"/api/v1/agents/{agent_id}/stop", headers=app.auth())
    assert stop.status_code == 200, stop.text
    assert not await asyncio.to_thread(workdir.exists)  # removed with the sandbox

    trusted, pod2 = await hostile(app, AGENT_ISOLATION="none")
    plain = (await run(app, trusted, pod2, "environ", {}))["result"]
    assert SECRET_VAR in plain["names"]  # what `none` means: the fabric's own environment


async def test_container_level_is_refused_clearly(app: RunningApp) -> None:
    agent_id, pod = await hostile(app, AGENT_ISOLATION="container")
    record = await run(app, agent_id, pod, "environ", {})
    assert record["status"] == "failed" and record["error"]["code"] == "isolation_unavailable"
    assert "container runtime" in record["error"]["message"]
    response = await app.client.post(f"/api/v1/agents/{agent_id}/start", headers=app.auth())
    assert response.status_code == 422 and response.json()["code"] == "isolation_unavailable"
    manifests = await app.client.get(
        f"/api/v1/agents/{agent_id}/kubernetes", headers=app.auth(), params={"image": "registry.example/hostile:1"}
    )
    assert manifests.status_code == 200, manifests.text
    kinds = [m["kind"] for m in manifests.json()["items"]]
    assert kinds == ["Deployment", "NetworkPolicy"]


class _Site:
    """A real HTTP server on 127.0.0.1 answering its own name, for the egress tests."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def __aenter__(self) -> _Site:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = self.name.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(answer, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="egress enforcement needs bubblewrap (scripts/services.sh)")
async def test_egress_allowlist_is_enforced_and_cannot_be_bypassed(app: RunningApp) -> None:
    async with _Site("allowed-site") as allowed, _Site("denied-site") as denied:
        agent_id, pod = await hostile(app, AGENT_NETWORK_EGRESS=f"127.0.0.1:{allowed.port}")
        ok = (await run(app, agent_id, pod, "fetch", {"url": f"http://127.0.0.1:{allowed.port}/"}))["result"]
        assert ok == {"status": 200, "body": "allowed-site"}
        refused = (await run(app, agent_id, pod, "fetch", {"url": f"http://127.0.0.1:{denied.port}/"}))["result"]
        assert refused["status"] == 403 and "not in the agent's network_egress" in refused["body"]
        direct = await run(app, agent_id, pod, "fetch", {"url": f"http://127.0.0.1:{allowed.port}/", "direct": True})
        assert "error" in direct["result"], direct  # its own network namespace: nothing out there

        # The tenant's url: policy rules apply on top of the list.
        response = await app.client.put(
            f"/api/v1/policies/{pod}-no-secrets",
            headers=app.auth(),
            json={
                "scope": {"tenant_id": pod},
                "rules": [{"action_pattern": f"url:http://127.0.0.1:{allowed.port}/secret*", "effect": "deny"}],
            },
        )
        assert response.status_code in (200, 201), response.text
        secret = (await run(app, agent_id, pod, "fetch", {"url": f"http://127.0.0.1:{allowed.port}/secret"}))["result"]
        assert secret["status"] == 403 and "deny" in secret["body"]

        # Without the isolation the same agent reaches the denied site directly.
        open_agent, pod2 = await hostile(app, AGENT_ISOLATION="none")
        url = f"http://127.0.0.1:{denied.port}/"
        unfenced = (await run(app, open_agent, pod2, "fetch", {"url": url, "direct": True}))["result"]
        assert unfenced == {"status": 200, "body": "denied-site"}

    await app.fabric.governance.audit.flush()
    trail = (
        await app.client.get("/api/v1/audit", headers=app.auth(), params={"action": "agent.egress", "tenant_id": pod})
    ).json()["items"]
    decisions = {
        (e["request"]["port"], e["request"]["url"].endswith("/secret"), e["response"]["allowed"]) for e in trail
    }
    assert decisions == {(allowed.port, False, True), (denied.port, False, False), (allowed.port, True, False)}


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the NATS route matters inside a network namespace")
async def test_an_agent_reaches_the_bundled_nats_with_its_own_user_from_its_sandbox(tmp_path: Path) -> None:
    (tmp_path / "packages").mkdir()
    settings = process_settings(tmp_path, None, None, None)  # type: ignore[arg-type]  # bundled nats-server
    async with running_app(settings) as app:
        agent_id, pod = await hostile(app)
        heard: list[bytes] = []

        async def on_msg(msg: Any) -> None:
            heard.append(msg.data)

        await app.fabric.nc.subscribe(f"agent.{agent_id}.hello", cb=on_msg)
        record = await run(app, agent_id, pod, "nats", {"text": "from the sandbox"})
        assert record["status"] == "completed", record
        result = record["result"]
        assert result["url"] == "nats://127.0.0.1:4222"  # the relay inside its network namespace
        await until(lambda: heard, timeout=10, what="the agent's message on its own subject")
        assert heard == [b"from the sandbox"]
        assert any("permissions violation" in e.lower() for e in result["errors"]), result  # not others' results


async def test_an_exit_is_seen_even_when_a_child_keeps_the_pipes_open(app: RunningApp) -> None:
    agent_id, pod = await hostile(app)
    record = await run(app, agent_id, pod, "orphan", {})
    # Every process it lands on dies the same way: handed on, then the agent's crash loop stops it.
    assert record["status"] == "failed", record
    assert record["error"]["code"] in ("agent_crashed", "agent_unavailable"), record
    assert "exited with code 7" in record["error"]["message"]
