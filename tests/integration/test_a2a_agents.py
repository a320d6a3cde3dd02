"""A2A agents end to end: a package of runtime `a2a` found by discovery and registered to a tenant,
tasks through both doors on real NATS, Postgres and Redis, run on a stand-in A2A agent speaking
JSON-RPC on a loopback port (tests/support/a2a_standin.py): results, typed failures, cancellation
and timeouts reaching `tasks/cancel`, and a task resumed after the fabric restarted following its
A2A task instead of sending it again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from agent_fabric.a2a.client import A2AClient, A2AError
from agent_fabric.settings import A2ASettings, AgentsSettings, Settings
from tests.conftest import RunningApp, make_settings, new_job_id, running_app
from tests.support.a2a_standin import A2AStandIn, running_a2a_standin
from tests.support.flows import auth_as, collect, for_job, new_pod, structured, task_status, until
from tests.support.nats_server import free_port
from tests.support.process_agents import package, register

TOKEN = "a2a-standin-token-0123456789"


def a2a_settings(tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str) -> Settings:
    return make_settings(
        tmp_path,
        nats_url,
        database_url=postgres_url,
        redis_url=redis_url,
        agents=AgentsSettings(dir=str(tmp_path / "packages"), rescan_seconds=3600),
        a2a=A2ASettings(poll_seconds=0.05, request_timeout_seconds=5),
        shutdown_grace_seconds=1,
    )


@pytest.fixture
async def standin() -> AsyncIterator[tuple[str, A2AStandIn]]:
    async with running_a2a_standin(TOKEN) as found:
        yield found


@pytest.fixture
async def app(tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str) -> AsyncIterator[RunningApp]:
    (tmp_path / "packages").mkdir()
    async with running_app(a2a_settings(tmp_path, nats_url, postgres_url, redis_url)) as running:
        yield running


def a2a_package(app: RunningApp, url: str, token_env: str | None = None) -> Path:
    suffix = uuid.uuid4().hex[:8]
    folder = app.fabric.settings.state_dir / "packages" / f"remote-{suffix}"
    folder.mkdir()
    values = {
        "AGENT_NAME": f"Remote-{suffix}",
        "AGENT_VERSION": "1.0.0",
        "AGENT_DESCRIPTION": "an agent that runs elsewhere and speaks A2A",
        "AGENT_TYPE": "remote",
        "DEFAULT_SUBSCRIBED_TOPICS": "logs.remote",
        "DEFAULT_FINDINGS_TOPIC": "findings.remote",
        "AGENT_RUNTIME": "a2a",
        "AGENT_A2A_URL": url,
        **({"AGENT_A2A_TOKEN_ENV": token_env} if token_env else {}),
    }
    (folder / ".env.discovery").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return folder.resolve()


async def a2a_agent(app: RunningApp, url: str, pod: str, monkeypatch: pytest.MonkeyPatch, token: str = TOKEN) -> str:
    """A registered A2A agent of `pod` whose token is in the fabric's environment."""
    env = f"A2A_TEST_TOKEN_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(env, token)
    return await register(app, a2a_package(app, url, env), pod)


def a2a_task(job_id: str, agent_id: str, inp: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "agent_definition": {"runtime": "a2a", "agent_id": agent_id},
        "task": {"type": "remote.echo", "input": inp},
        **extra,
    }


async def submit(app: RunningApp, pod: str, body: dict[str, Any]) -> None:
    response = await app.client.post("/api/v1/tasks", headers=auth_as(app, "alice", "agent", pod), json=body)
    assert response.status_code == 202, response.text


async def progress_of(app: RunningApp, pod: str, job: str) -> list[dict[str, Any]]:
    return [e["data"] for e in await app.fabric.store.events_after(pod, job, None) if e["kind"] == "progress"]


async def test_a_task_runs_on_an_a2a_agent_through_both_doors(
    app: RunningApp, nc: Client, standin: tuple[str, A2AStandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, agent = standin
    pod = new_pod()
    agent_id = await a2a_agent(app, url, pod, monkeypatch)
    record = await app.fabric.agents.registry.get(agent_id)
    assert record is not None and record.runtime == "a2a" and record.command is None
    assert "a2a-standin-token" not in str(record.view()) + str(record.manifest)  # the token stays in the environment

    http_job, nats_job = new_job_id("a2a-http"), new_job_id("a2a-nats")
    await submit(app, pod, a2a_task(http_job, agent_id, {"msg": "hi"}))
    done = await task_status(app, http_job, {"completed", "failed", "rejected"}, pod, timeout=20)
    assert done["status"] == "completed", done
    result = done["result"]
    assert result["agent_id"] == agent_id and result["text"] == "done: hi" and result["data"] == [{"msg": "hi"}]
    assert result["a2a_task_id"] in agent.tasks and len(result["artifacts"]) == 1
    states = [p["state"] for p in await progress_of(app, pod, http_job)]
    assert states[0] == "submitted" and states[-1] == "completed" and "working" in states
    sent = agent.messages[0]
    assert [p["kind"] for p in sent["parts"]] == ["text", "data"] and sent["parts"][1]["data"] == {"msg": "hi"}
    assert "remote.echo" in sent["parts"][0]["text"] and sent["metadata"]["job_id"] == http_job

    async with collect(nc, "agent.status.>") as events:
        body = {**a2a_task(nats_job, agent_id, {"msg": "over nats"}), "tenant_id": pod}
        bob = auth_as(app, "bob", "agent", pod)
        await nc.jetstream().publish("agent.execute.normal", structured(body), headers=bob)
        await until(
            lambda: [e for e in for_job(events, nats_job) if e["type"] == "agent.status.completed"],
            timeout=20,
            what="the NATS task's result",
        )
    finished = [e for e in for_job(events, nats_job) if e["type"] == "agent.status.completed"]
    assert len(finished) == 1 and finished[0]["data"]["result"]["text"] == "done: over nats"
    assert len(agent.messages) == 2  # one message per task

    stranger = await app.client.post(
        "/api/v1/tasks",
        headers=auth_as(app, "mallory", "agent", new_pod()),
        json=a2a_task(new_job_id("x"), agent_id, {}),
    )
    assert stranger.status_code == 422 and stranger.json()["code"] == "unknown_agent"
    unknown = await app.client.post(
        "/api/v1/tasks", headers=auth_as(app, "alice", "agent", pod), json=a2a_task(new_job_id("y"), "remote-nope", {})
    )
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_agent"
    nameless = await app.client.post(
        "/api/v1/tasks",
        headers=auth_as(app, "alice", "agent", pod),
        json={"job_id": new_job_id("z"), "agent_definition": {"runtime": "a2a"}, "task": {"type": "t", "input": {}}},
    )
    assert nameless.status_code == 422 and "agent_id" in nameless.text
    for action in ("start", "stop", "restart"):  # it runs elsewhere: no processes to act on
        refused = await app.client.post(f"/api/v1/agents/{agent_id}/{action}", headers=app.auth())
        assert refused.status_code == 422 and refused.json()["code"] == "not_a_process_agent", refused.text


async def test_failures_are_typed(
    app: RunningApp, standin: tuple[str, A2AStandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, agent = standin
    pod = new_pod()
    good = await a2a_agent(app, url, pod, monkeypatch)
    wrong_token = await a2a_agent(app, url, pod, monkeypatch, token="not-the-token")
    nobody = await a2a_agent(app, f"http://127.0.0.1:{free_port()}/", pod, monkeypatch)
    jobs = {
        "failed": (good, {"mode": "fail"}),
        "asks": (good, {"mode": "ask"}),
        "auth": (wrong_token, {"msg": "x"}),
        "unreachable": (nobody, {"msg": "x"}),
    }
    ids = {name: new_job_id(name) for name in jobs}
    for name, (agent_id, inp) in jobs.items():
        await submit(app, pod, a2a_task(ids[name], agent_id, inp))
    ended = {name: await task_status(app, ids[name], {"completed", "failed"}, pod, timeout=20) for name in jobs}
    assert all(r["status"] == "failed" for r in ended.values()), ended
    codes = {name: r["error"]["code"] for name, r in ended.items()}
    assert codes == {
        "failed": "agent_error",
        "asks": "agent_input_required",
        "auth": "agent_auth_failed",
        "unreachable": "agent_unreachable",
    }
    assert "the agent broke" in ended["failed"]["error"]["message"]
    assert "which region?" in ended["asks"]["error"]["message"]
    asked = ended["asks"]["error"]["message"].split()[2]  # "A2A task <id> of agent ..."
    assert agent.called("tasks/cancel") == [asked]  # nobody can answer it: the task is cancelled

    process_agent = await register(app, package(app.fabric.settings.state_dir / "packages", "echo"), pod)
    mismatched = new_job_id("mismatch")
    await submit(app, pod, a2a_task(mismatched, process_agent, {}))
    record = await task_status(app, mismatched, {"rejected", "failed"}, pod, timeout=20)
    assert record["status"] == "rejected" and record["error"]["code"] == "runtime_mismatch", record


async def test_a_flaky_agent_is_polled_again_and_a_forgetful_one_is_named(
    app: RunningApp, standin: tuple[str, A2AStandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, agent = standin
    pod = new_pod()
    agent_id = await a2a_agent(app, url, pod, monkeypatch)
    flaky, lost = new_job_id("flaky"), new_job_id("lost")
    agent.unavailable_gets = 3  # three 503s in a row: within what a poll retries
    await submit(app, pod, a2a_task(flaky, agent_id, {"msg": "again"}))
    record = await task_status(app, flaky, {"completed", "failed"}, pod, timeout=20)
    assert record["status"] == "completed" and record["result"]["text"] == "done: again", record
    assert agent.unavailable_gets == 0

    await submit(app, pod, a2a_task(lost, agent_id, {"mode": "hang"}))
    await until(lambda: len(agent.called("tasks/get")) >= 8, timeout=15, what="the hanging task followed")
    agent.forget()
    record = await task_status(app, lost, {"completed", "failed"}, pod, timeout=20)
    assert record["error"]["code"] == "agent_task_lost", record


async def test_cancel_and_timeout_reach_tasks_cancel(
    app: RunningApp, standin: tuple[str, A2AStandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, agent = standin
    pod = new_pod()
    agent_id = await a2a_agent(app, url, pod, monkeypatch)
    cancelled, timed = new_job_id("cancel"), new_job_id("timeout")
    await submit(app, pod, a2a_task(cancelled, agent_id, {"mode": "hang"}))
    await submit(app, pod, a2a_task(timed, agent_id, {"mode": "hang"}, timeout_seconds=1.5))
    await until(lambda: len(agent.messages) == 2, timeout=15, what="both tasks sent")
    await until(lambda: len(agent.called("tasks/get")) >= 2, timeout=15, what="the tasks followed")
    response = await app.client.post(f"/api/v1/tasks/{cancelled}/cancel?tenant_id={pod}", headers=app.auth())
    assert response.status_code == 202, response.text
    assert (await task_status(app, cancelled, {"cancelled"}, pod, timeout=15))["status"] == "cancelled"
    record = await task_status(app, timed, {"timed_out", "failed"}, pod, timeout=15)
    assert record["error"]["code"] == "timeout", record
    by_job = {m["metadata"]["job_id"]: m for m in agent.messages}
    assert set(by_job) == {cancelled, timed}
    cancels = agent.called("tasks/cancel")
    assert len(cancels) == 2 and all(agent.tasks[str(t)]["status"]["state"] == "canceled" for t in cancels)


async def test_a_resumed_task_follows_its_a2a_task_and_never_resends(
    tmp_path: Path,
    nats_url: str,
    postgres_url: str,
    redis_url: str,
    standin: tuple[str, A2AStandIn],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, agent = standin
    pod, job = new_pod(), new_job_id("resume")
    (tmp_path / "packages").mkdir()
    settings = a2a_settings(tmp_path, nats_url, postgres_url, redis_url)
    async with running_app(settings) as first:
        agent_id = await a2a_agent(first, url, pod, monkeypatch)
        await submit(first, pod, a2a_task(job, agent_id, {"msg": "slow", "seconds": 4}))
        await until(lambda: len(agent.messages) == 1, timeout=15, what="the task sent")
        await until(lambda: len(agent.called("tasks/get")) >= 1, timeout=15, what="the task followed")
        a2a_task_id = agent.called("message/send")[0]
        saved = await first.fabric.store.latest_checkpoint(pod, job)
        assert saved is not None and saved[1]["a2a_task_id"] == a2a_task_id
    # The fabric stopped mid-task (grace 1 s): the task was handed back, not cancelled at the agent.
    assert agent.called("tasks/cancel") == [] and agent.tasks[str(a2a_task_id)]["status"]["state"] == "working"
    async with running_app(settings) as second:
        record = await task_status(second, job, {"completed", "failed"}, pod, timeout=25)
        assert record["status"] == "completed", record
        assert record["result"]["a2a_task_id"] == a2a_task_id and record["result"]["text"] == "done: slow"
        assert record["attempts"] == 2, record
    assert len(agent.messages) == 1  # followed with tasks/get, never sent twice


async def test_the_client_reads_the_agent_card_and_maps_refusals(standin: tuple[str, A2AStandIn]) -> None:
    url, _ = standin
    client = A2AClient(url, token=TOKEN, timeout=5)
    try:
        assert (await client.agent_card())["name"] == "Stand-in"
        with pytest.raises(A2AError) as missing:
            await client.get_task("nope")
        assert missing.value.code == "agent_error" and missing.value.rpc_code == -32001
    finally:
        await client.aclose()
    anonymous = A2AClient(url, timeout=5)
    try:
        with pytest.raises(A2AError) as refused:
            await anonymous.get_task("nope")
        assert refused.value.code == "agent_auth_failed" and not refused.value.transient
    finally:
        await anonymous.aclose()


async def test_a_broken_a2a_package_is_reported_and_never_registered(app: RunningApp) -> None:
    broken = a2a_package(app, "ftp://agents.example.com/", token_env="AGENT_FABRIC_JWT_SECRET")
    report = await app.fabric.agents.discovery.scan()
    found = next(p for p in report.packages if p.path == broken)
    assert found.status == "broken" and found.agent_id is None
    assert {(p.field, p.message.split(" ", 1)[1]) for p in found.problems} == {
        ("AGENT_A2A_URL", "must be an http:// or https:// URL"),
        ("AGENT_A2A_TOKEN_ENV", "is one of the fabric's own settings, never sent to an agent"),
    }
