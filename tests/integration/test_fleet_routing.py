"""agent-zero tasks run in the POD's fleet agents' chats: routed by profile, one task per chat at a
time (claims in fleet_agents, across replicas), balanced least recently used, failing over from a
lost chat. Stand-in Agent Zero over real HTTP, both database backends."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_fabric.agent_zero import fleet_rows
from agent_fabric.agent_zero.client import AgentZeroClient
from tests.conftest import RunningApp, new_job_id, running_app
from tests.integration.conftest import agent_zero_settings
from tests.support.agent_zero_standin import AgentZeroStandIn
from tests.support.flows import auth_as, new_pod, until

KEY = "standin-key-0123456789"


@pytest.fixture
def app(fleet_app: RunningApp) -> RunningApp:
    return fleet_app


class Pod:
    """One POD seen through the API: its administrator, its fleet and its tasks."""

    def __init__(self, app: RunningApp) -> None:
        self.app = app
        self.id = new_pod()
        self.admin = auth_as(app, "alice", "pod_admin", self.id)

    async def start(self) -> dict[str, Any]:
        started = await self.app.client.post("/api/v2/agent/fleet/start", headers=self.admin)
        assert started.status_code == 201, started.text
        return dict(started.json()["orchestrator"])

    async def spawn(self, profile: str) -> dict[str, Any]:
        spawned = await self.app.client.post(
            "/api/v2/agent/agents/spawn", headers=self.admin, json={"profile": profile}
        )
        assert spawned.status_code == 201, spawned.text
        return dict(spawned.json())

    async def agent(self, agent_id: str) -> dict[str, Any]:
        return dict((await self.app.client.get(f"/api/v2/agent/agents/{agent_id}", headers=self.admin)).json())

    async def submit(self, task_type: str, message: str, **extra: Any) -> str:
        job = new_job_id("route")
        body = {
            "job_id": job,
            "tenant_id": self.id,
            "agent_definition": {"runtime": "agent-zero"},
            "task": {"type": task_type, "message": message},
            **extra,
        }
        submitted = await self.app.client.post("/api/v1/tasks", headers=self.app.auth(), json=body)
        assert submitted.status_code == 202, submitted.text
        return job

    async def task(self, job: str) -> dict[str, Any]:
        got = await self.app.client.get(f"/api/v1/tasks/{job}?tenant_id={self.id}", headers=self.app.auth())
        return dict(got.json())

    async def final(self, job: str) -> dict[str, Any]:
        async with asyncio.timeout(30):
            while (task := await self.task(job))["status"] in ("queued", "running"):
                await asyncio.sleep(0.05)
        return task


async def test_tasks_run_in_the_matching_agents_chat(app: RunningApp, standin: tuple[str, AgentZeroStandIn]) -> None:
    url, a0 = standin
    pod = Pod(app)
    before = (await pod.final(await pod.submit("FIND_GPU", "no fleet yet")))["result"]
    assert before["agent_id"] is None and a0.contexts[before["context_id"]].profile == "gpubroker-provider"

    orchestrator = await pod.start()
    provider = await pod.spawn("gpubroker-provider")
    chats = len(a0.contexts)
    found = await pod.final(await pod.submit("FIND_GPU", "[sleep 0.2] find an H100"))
    assert found["status"] == "completed", found
    result = found["result"]
    assert (result["agent_id"], result["context_id"], result["instance"]) == (
        provider["id"],
        provider["context_id"],
        url,
    )
    assert (provider["context_id"], "[sleep 0.2] find an H100") in a0.received
    assert len(a0.contexts) == chats  # no chat was opened for it

    chat = (await pod.final(await pod.submit("CHAT", "what is running?")))["result"]  # no profile: the orchestrator
    assert (chat["agent_id"], chat["context_id"]) == (orchestrator["id"], orchestrator["context_id"])
    optimise = (await pod.final(await pod.submit("OPTIMIZE_COST", "cheaper?")))["result"]  # no optimizer agent
    assert optimise["agent_id"] is None and a0.contexts[optimise["context_id"]].profile == "gpubroker-optimizer"

    # The same message again in the same chat: the earlier identical task's answer is not taken for its own.
    again = await pod.final(await pod.submit("FIND_GPU", "[sleep 0.2] find an H100"))
    assert again["result"]["context_id"] == provider["context_id"]
    assert a0.received.count((provider["context_id"], "[sleep 0.2] find an H100")) == 2


async def test_one_task_per_chat_and_balanced_across_agents(
    app: RunningApp, standin: tuple[str, AgentZeroStandIn]
) -> None:
    _, a0 = standin
    pod = Pod(app)
    await pod.start()
    provider = await pod.spawn("gpubroker-provider")
    first, second = [await pod.submit("FIND_GPU", f"[sleep 0.8] search {n}") for n in (1, 2)]
    await until(lambda: a0.contexts[provider["context_id"]].running is not None, what="the specialist works")
    busy = await pod.agent(provider["id"])
    assert busy["status"] == "busy" and busy["job_id"] in (first, second)
    results = [(await pod.final(job))["result"] for job in (first, second)]
    assert {r["agent_id"] for r in results} == {provider["id"]}  # one after the other in the same chat
    assert a0.stats.overlapping_messages == 0
    idle = await pod.agent(provider["id"])
    assert idle["status"] == "idle" and idle["job_id"] is None

    other = await pod.spawn("gpubroker-provider")
    jobs = [await pod.submit("FIND_GPU", f"[sleep 0.8] wide search {n}") for n in (1, 2)]
    finals = [await pod.final(job) for job in jobs]
    assert sorted(f["result"]["agent_id"] for f in finals) == sorted([provider["id"], other["id"]])  # both agents
    # ...at the same time: their recorded runs overlap (each sleeps 0.8 s in its own chat).
    (s1, e1), (s2, e2) = [
        (datetime.fromisoformat(f["started_at"]), datetime.fromisoformat(f["finished_at"])) for f in finals
    ]
    assert max(s1, s2) < min(e1, e2) and a0.stats.overlapping_messages == 0
    # Least recently used first: `other` has just run, and so has `provider`; the one idle longer goes next.
    agents = {a: await pod.agent(a) for a in (provider["id"], other["id"])}
    older = min(agents.values(), key=lambda a: str(a["last_activity_at"]))
    assert (await pod.final(await pod.submit("FIND_GPU", "next")))["result"]["agent_id"] == older["id"]


async def test_a_cancelled_or_timed_out_task_frees_its_agent(
    app: RunningApp, standin: tuple[str, AgentZeroStandIn]
) -> None:
    _, a0 = standin
    pod = Pod(app)
    await pod.start()
    provider = await pod.spawn("gpubroker-provider")
    slow = await pod.final(await pod.submit("FIND_GPU", "[sleep 5] slow", timeout_seconds=0.8))
    assert slow["status"] == "timed_out" and a0.stats.resets == 1  # reset stops Agent Zero's run (and clears the chat)
    assert (await pod.agent(provider["id"]))["job_id"] is None
    failed = await pod.final(await pod.submit("FIND_GPU", "[fail] broken"))
    assert failed["status"] == "failed" and failed["error"]["code"] == "agent_error"
    after = await pod.final(await pod.submit("FIND_GPU", "still there?"))
    assert after["status"] == "completed" and after["result"]["agent_id"] == provider["id"]


async def test_terminated_and_lost_agents_are_not_used(app: RunningApp, standin: tuple[str, AgentZeroStandIn]) -> None:
    url, a0 = standin
    pod = Pod(app)
    await pod.start()
    ended, kept = await pod.spawn("gpubroker-provider"), await pod.spawn("gpubroker-provider")
    gone = await app.client.post(f"/api/v2/agent/agents/{ended['id']}/terminate", headers=pod.admin)
    assert gone.status_code == 200
    for n in range(2):
        result = (await pod.final(await pod.submit("FIND_GPU", f"after terminate {n}")))["result"]
        assert result["agent_id"] == kept["id"]

    direct = AgentZeroClient(url, KEY)  # Agent Zero drops the chat behind the fabric's back
    await direct.terminate_chat(kept["context_id"])
    await direct.aclose()
    failed_over = await pod.final(await pod.submit("FIND_GPU", "where now?"))
    assert failed_over["status"] == "completed", failed_over
    assert failed_over["result"]["agent_id"] is None  # a fresh chat: no provider agent is left
    assert a0.contexts[failed_over["result"]["context_id"]].profile == "gpubroker-provider"
    lost = await pod.agent(kept["id"])
    assert lost["status"] == "error" and kept["context_id"] in lost["last_error"]


async def test_a_dead_runs_claim_lapses(app: RunningApp, standin: tuple[str, AgentZeroStandIn]) -> None:
    pod = Pod(app)
    await pod.start()
    provider = await pod.spawn("gpubroker-provider")
    now = datetime.now(UTC)
    async with app.fabric.engine.begin() as conn:  # what a replica killed mid-task leaves behind
        assert await fleet_rows.claim(conn, provider["id"], "dead-job", now + timedelta(seconds=1.5), now)
    async with app.fabric.engine.begin() as conn:  # another job cannot take it; the same job can (a redelivery)
        assert await fleet_rows.claim(conn, provider["id"], "other-job", now + timedelta(seconds=9), now) is None
        again = await fleet_rows.claim(conn, provider["id"], "dead-job", now + timedelta(seconds=1.5), now)
        assert again is not None and again.claimed_by == "dead-job"
    held = await pod.agent(provider["id"])
    assert held["status"] == "busy" and held["job_id"] == "dead-job"
    started = time.monotonic()
    job = await pod.submit("FIND_GPU", "after the lapse")
    async with asyncio.timeout(5):  # the task says it waits for the agent
        while not await _waiting(pod, job):
            await asyncio.sleep(0.05)
    done = await pod.final(job)
    assert done["status"] == "completed" and done["result"]["agent_id"] == provider["id"]
    assert time.monotonic() - started >= 1.0  # it waited for the claim to lapse


async def _waiting(pod: Pod, job: str) -> bool:
    events = await pod.app.fabric.store.events_after(pod.id, job, None)
    return any(e["kind"] == "progress" and e["data"].get("type") == "fleet" for e in events)


async def test_two_replicas_never_share_a_chat(
    tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str, standin: tuple[str, AgentZeroStandIn]
) -> None:
    url, a0 = standin
    settings = [agent_zero_settings(tmp_path / n, nats_url, url, postgres_url, redis_url) for n in "ab"]
    async with running_app(settings[0]) as a, running_app(settings[1]) as b:
        pod = Pod(a)
        await pod.start()
        provider = await pod.spawn("gpubroker-provider")
        # Both replicas consume the task stream: the tasks run on either, only the claims keep them apart.
        jobs = [await pod.submit("FIND_GPU", f"[sleep 0.3] r{n}") for n in range(4)]
        via_b = Pod(b)
        via_b.id = pod.id
        finals = [await via_b.final(job) for job in jobs]
        assert {f["result"]["agent_id"] for f in finals} == {provider["id"]}
        assert a0.stats.overlapping_messages == 0
