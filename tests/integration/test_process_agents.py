"""Process agents end to end: real agent processes started by the fabric, real NATS, SQLite and
Postgres. A task reaches the process through both doors; kill -9 of the process resumes from the
checkpoint on a fresh one and publishes once; heartbeat loss, crash loops, drain on stop, and
cancel/timeout reaching the process."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from nats.aio.client import Client

from agent_fabric import names
from agent_fabric.settings import AgentsSettings, ProcessAgentSettings
from tests.conftest import RunningApp, make_settings, new_job_id, running_app
from tests.support.flows import audit, auth_as, collect, for_job, new_pod, structured, task_status, until
from tests.support.process_agents import package, process_task, register

FAST = ProcessAgentSettings(
    backoff_base_seconds=0.05,
    backoff_max_seconds=0.5,
    max_restarts=3,
    cancel_grace_seconds=5,
    drain_timeout_seconds=20,
    ready_timeout_seconds=30,
)


def process_settings(tmp_path: Path, nats_url: str, db: str | None, redis: str | None, **over: Any) -> Any:
    return make_settings(
        tmp_path,
        nats_url,
        database_url=db,
        redis_url=redis,
        agents=AgentsSettings(
            dir=str(tmp_path / "packages"), rescan_seconds=3600, config={"heartbeat_interval_seconds": 2}
        ),
        process=over.pop("process", FAST),
        **over,
    )


@pytest.fixture
async def proc_app(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str
) -> AsyncIterator[RunningApp]:
    db, redis = (postgres_url, redis_url) if backend == "postgres" else (None, None)
    (tmp_path / "packages").mkdir()
    async with running_app(process_settings(tmp_path, nats_url, db, redis)) as app:
        yield app


@pytest.fixture
async def sqlite_app(tmp_path: Path, nats_url: str) -> AsyncIterator[RunningApp]:
    (tmp_path / "packages").mkdir()
    async with running_app(process_settings(tmp_path, nats_url, None, None)) as app:
        yield app


def packages(app: RunningApp) -> Path:
    return app.fabric.settings.state_dir / "packages"


async def health(app: RunningApp, agent_id: str) -> dict[str, Any]:
    response = await app.client.get(f"/api/v1/agents/{agent_id}/health", headers=app.auth())
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_health(app: RunningApp, agent_id: str, check: Any, timeout: float = 30) -> dict[str, Any]:
    found: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                found = await health(app, agent_id)
                if check(found):
                    return found
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"health never matched within {timeout}s; last: {found}") from None


def busy_pid(app: RunningApp, agent_id: str, job: str) -> int | None:
    pool = app.fabric.processes.lifecycle.pools.get(agent_id)
    for proc in pool.processes.values() if pool else ():
        if proc.job_id == job and proc.agent_pid is not None:
            return proc.agent_pid
    return None


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has ended)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def progress_of(app: RunningApp, pod: str, job: str) -> list[dict[str, Any]]:
    return [e["data"] for e in await app.fabric.store.events_after(pod, job, None) if e["kind"] == "progress"]


async def test_a_task_runs_on_a_process_agent_through_both_doors(proc_app: RunningApp, nc: Client) -> None:
    app, pod = proc_app, new_pod()
    agent_id = await register(app, package(packages(app), "echo"), pod)
    alice = auth_as(app, "alice", "agent", pod)
    http_job, nats_job = new_job_id("http"), new_job_id("nats")
    async with collect(nc, "agent.status.>") as results:
        response = await app.client.post(
            "/api/v1/tasks", headers=alice, json=process_task(http_job, agent_id, "echo", {"msg": "hi"})
        )
        assert response.status_code == 202, response.text
        record = await task_status(app, http_job, {"completed", "failed", "rejected"}, pod, timeout=60)
        assert record["status"] == "completed", record
        assert record["result"] == {"msg": "hi"}

        body = {**process_task(nats_job, agent_id, "sleep", {"seconds": 0.5}), "tenant_id": pod}
        await nc.jetstream().publish("agent.execute.normal", structured(body), headers=alice)
        await until(
            lambda: [e for e in for_job(results, nats_job) if e["type"] == "agent.status.completed"],
            timeout=60,
            what="the NATS task's result",
        )
    done = [e for e in for_job(results, nats_job) if e["type"] == "agent.status.completed"]
    assert len(done) == 1 and done[0]["data"]["result"] == {"slept": 0.5}
    assert done[0]["data"]["usage"]["compute_seconds"] == 0.5  # reported by the agent
    assert [p["of"] for p in await progress_of(app, pod, nats_job)][:1] == [0.5]

    found = await health(app, agent_id)
    assert found["status"] == "running" and found["processes"]
    assert all(p["last_heartbeat"]["agent_id"] == agent_id for p in found["processes"])
    assert set(found["processes"][0]["last_heartbeat"]) == {"agent_id", "status", "timestamp", "uptime"}
    registry = await app.fabric.agents.registry.get(agent_id)
    assert registry is not None and registry.status.value == "running"

    other = auth_as(app, "mallory", "agent", new_pod())  # another tenant's task cannot use the agent
    stranger = await app.client.post(
        "/api/v1/tasks", headers=other, json=process_task(new_job_id("x"), agent_id, "echo")
    )
    assert stranger.status_code == 422 and stranger.json()["code"] == "unknown_agent"


async def test_kill_9_of_the_agent_process_resumes_from_its_checkpoint_once(proc_app: RunningApp, nc: Client) -> None:
    app, pod = proc_app, new_pod()
    agent_id = await register(app, package(packages(app), "steps"), pod)
    job = new_job_id("steps")
    async with collect(nc, "agent.status.>") as results:
        await app.client.post(
            "/api/v1/tasks",
            headers=app.auth(),
            json={**process_task(job, agent_id, "steps", {"steps": 8, "step_seconds": 0.3}), "tenant_id": pod},
        )

        async def two_steps_saved() -> int:
            async with asyncio.timeout(60):
                while True:
                    steps = [p.get("step", 0) for p in await progress_of(app, pod, job)]
                    pid = busy_pid(app, agent_id, job)
                    if steps and max(steps) >= 2 and pid is not None:
                        return pid
                    await asyncio.sleep(0.05)

        victim = await two_steps_saved()
        os.kill(victim, signal.SIGKILL)
        record = await task_status(app, job, {"completed", "failed"}, pod, timeout=60)
        await asyncio.sleep(0.5)
    assert record["status"] == "completed", record
    result = record["result"]
    assert result["steps"] == 8 and result["resumed_from"] >= 2
    assert result["pids"][0] == victim and len(result["pids"]) == 2 and victim != result["pids"][1]
    assert record["attempts"] == 1  # the same attempt moved to a fresh process
    finals = [e for e in for_job(results, job) if e["type"] in ("agent.status.completed", "agent.status.failed")]
    assert len(finals) == 1
    handed = [p for p in await progress_of(app, pod, job) if p.get("handed_back")]
    assert len(handed) == 1 and "exited with code -9" in handed[0]["reason"]
    runs = (await app.client.get(f"/api/v1/agents/{agent_id}/runs", headers=app.auth())).json()["items"]
    killed = [r for r in runs if r["pid"] == victim]
    assert killed and killed[0]["outcome"] == "failed" and killed[0]["exit_code"] == -9


async def test_a_process_that_misses_three_heartbeats_is_failed_and_replaced(
    sqlite_app: RunningApp, nc: Client
) -> None:
    app, pod = sqlite_app, new_pod()
    agent_id = await register(app, package(packages(app), "echo"), pod)
    async with collect(nc, names.agent_heartbeat_subject(agent_id)) as beats:
        response = await app.client.post(f"/api/v1/agents/{agent_id}/start", headers=app.auth())
        assert response.status_code == 202, response.text
        await until(lambda: beats, timeout=20, what="a heartbeat on NATS")
    assert beats[0]["agent_id"] == agent_id and {"status", "timestamp", "uptime", "process"} <= set(beats[0])
    first = await wait_health(app, agent_id, lambda h: any(p["state"] == "idle" for p in h["processes"]))
    frozen = first["processes"][0]["pid"]
    os.kill(frozen, signal.SIGSTOP)  # alive, silent: only the heartbeats can tell
    try:
        replaced = await wait_health(
            app,
            agent_id,
            lambda h: h["processes"] and all(p["pid"] != frozen and p["state"] == "idle" for p in h["processes"]),
        )
    finally:
        if alive(frozen):
            os.kill(frozen, signal.SIGCONT)
    assert replaced["status"] == "running" and replaced["restarts"] >= 1
    await until(lambda: not alive(frozen), timeout=10, what="the silent process killed")
    runs = (await app.client.get(f"/api/v1/agents/{agent_id}/runs", headers=app.auth())).json()["items"]
    gone = next(r for r in runs if r["pid"] == frozen)
    assert gone["outcome"] == "failed" and "missed 3 heartbeats" in gone["reason"]
    job = new_job_id("after")
    await app.client.post(
        "/api/v1/tasks", headers=app.auth(), json={**process_task(job, agent_id, "echo"), "tenant_id": pod}
    )
    assert (await task_status(app, job, {"completed"}, pod, timeout=30))["status"] == "completed"


async def test_a_crash_loop_stops_and_the_agent_stays_failed_with_an_alert(sqlite_app: RunningApp, nc: Client) -> None:
    app, pod = sqlite_app, new_pod()
    agent_id = await register(app, package(packages(app), "crasher"), pod)
    async with collect(nc, "agent.alerts.agents") as alerts:
        response = await app.client.post(f"/api/v1/agents/{agent_id}/start", headers=app.auth())
        assert response.status_code == 202, response.text
        failed = await wait_health(app, agent_id, lambda h: h["status"] == "failed")
        await until(lambda: [a for a in alerts if a["data"]["status"] == "failed"], what="the alert event")
    assert "crash loop: 3 failures in a row" in failed["reason"] and "exited with code 3" in failed["reason"]
    assert [a["data"]["status"] for a in alerts] == ["running", "failed"]
    assert alerts[1]["type"] == "agent.alerts.agents" and alerts[1]["data"]["agent_id"] == agent_id
    assert alerts[1]["data"]["failures"] == 3 and alerts[1]["data"]["reason"] == failed["reason"]
    await asyncio.sleep(0.5)  # no further starts once failed
    runs = (await app.client.get(f"/api/v1/agents/{agent_id}/runs", headers=app.auth())).json()["items"]
    assert len(runs) == 3 and all(r["exit_code"] == 3 and r["outcome"] == "failed" for r in runs)
    record = await app.fabric.agents.registry.get(agent_id)
    assert record is not None and record.status.value == "failed" and "crash loop" in (record.status_reason or "")
    trail = await audit(app, action="agent.alert", tenant_id=pod)
    assert sorted(e["request"]["status"] for e in trail) == ["failed", "running"]
    logs = (await app.client.get(f"/api/v1/agents/{agent_id}/logs", headers=app.auth())).json()["items"]
    assert any("refusing to start" in line["line"] for line in logs)

    job = new_job_id("doomed")
    await app.client.post(
        "/api/v1/tasks", headers=app.auth(), json={**process_task(job, agent_id, "x"), "tenant_id": pod}
    )
    record_ = await task_status(app, job, {"failed"}, pod, timeout=30)
    assert record_["error"]["code"] == "agent_unavailable" and "crash loop" in record_["error"]["message"]


async def test_stop_drains_the_running_task_then_refuses_new_ones(sqlite_app: RunningApp) -> None:
    app, pod = sqlite_app, new_pod()
    agent_id = await register(app, package(packages(app), "steps"), pod)
    job = new_job_id("drained")
    await app.client.post(
        "/api/v1/tasks",
        headers=app.auth(),
        json={**process_task(job, agent_id, "steps", {"steps": 6, "step_seconds": 0.3}), "tenant_id": pod},
    )
    await until(lambda: busy_pid(app, agent_id, job) is not None, timeout=60, what="the task on a process")
    response = await app.client.post(f"/api/v1/agents/{agent_id}/stop?drain_timeout=30", headers=app.auth())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "stopped"
    record = await task_status(app, job, {"completed", "failed"}, pod, timeout=10)
    assert record["status"] == "completed" and record["result"]["resumed_from"] == 0  # finished, not handed over
    runs = (await app.client.get(f"/api/v1/agents/{agent_id}/runs", headers=app.auth())).json()["items"]
    assert runs and all(r["outcome"] == "stopped" and r["exit_code"] == 0 for r in runs)
    assert (await health(app, agent_id))["processes"] == []
    assert await app.fabric.processes.lifecycle.runs.prune(older_than_days=1) == 0  # retention keeps them
    assert await app.fabric.processes.lifecycle.runs.prune(older_than_days=1e-9) == len(runs)

    late = new_job_id("late")
    await app.client.post(
        "/api/v1/tasks", headers=app.auth(), json={**process_task(late, agent_id, "echo"), "tenant_id": pod}
    )
    refused = await task_status(app, late, {"failed"}, pod, timeout=30)
    assert refused["error"]["code"] == "agent_unavailable" and "stopped" in refused["error"]["message"]
    started = await app.client.post(f"/api/v1/agents/{agent_id}/start", headers=app.auth())
    assert started.status_code == 202 and started.json()["status"] == "running"


@pytest.fixture
async def patient_app(tmp_path: Path, nats_url: str) -> AsyncIterator[RunningApp]:
    """A cancel grace long enough that a loaded machine never decides for the agent."""
    (tmp_path / "packages").mkdir()
    patient = FAST.model_copy(update={"cancel_grace_seconds": 15})
    async with running_app(process_settings(tmp_path, nats_url, None, None, process=patient)) as app:
        yield app


async def test_cancel_and_timeout_reach_the_process(patient_app: RunningApp) -> None:
    app, pod = patient_app, new_pod()
    echo = await register(app, package(packages(app), "echo"), pod)
    hostile = await register(app, package(packages(app), "hostile"), pod)

    polite = new_job_id("polite")
    await app.client.post(
        "/api/v1/tasks",
        headers=app.auth(),
        json={**process_task(polite, echo, "sleep", {"seconds": 60}), "tenant_id": pod},
    )
    await until(lambda: busy_pid(app, echo, polite) is not None, timeout=60, what="the sleep on a process")
    pid = busy_pid(app, echo, polite)
    cancel = await app.client.post(f"/api/v1/tasks/{polite}/cancel?tenant_id={pod}", headers=app.auth())
    assert cancel.status_code == 202, cancel.text
    assert (await task_status(app, polite, {"cancelled"}, pod, timeout=45))["status"] == "cancelled"
    runs = (await app.client.get(f"/api/v1/agents/{echo}/runs", headers=app.auth())).json()["items"]
    reasons = [(r["pid"], r["reason"]) for r in runs]
    assert pid is not None and alive(pid), reasons  # it stopped the task itself: the process stays and is reused
    await wait_health(app, echo, lambda h: any(p["pid"] == pid and p["state"] == "idle" for p in h["processes"]))

    timed = new_job_id("timed")
    await app.client.post(
        "/api/v1/tasks",
        headers=app.auth(),
        json={**process_task(timed, echo, "sleep", {"seconds": 60}), "tenant_id": pod, "timeout_seconds": 1.5},
    )
    record = await task_status(app, timed, {"timed_out"}, pod, timeout=30)
    assert record["error"]["code"] == "timeout"
    await wait_health(app, echo, lambda h: h["busy"] == 0)

    stubborn = new_job_id("stubborn")
    await app.client.post(
        "/api/v1/tasks",
        headers=app.auth(),
        json={**process_task(stubborn, hostile, "ignore_cancel", {"seconds": 120}), "tenant_id": pod},
    )
    await until(lambda: busy_pid(app, hostile, stubborn) is not None, timeout=60, what="the stubborn task")
    deaf = busy_pid(app, hostile, stubborn)
    await app.client.post(f"/api/v1/tasks/{stubborn}/cancel?tenant_id={pod}", headers=app.auth())
    assert (await task_status(app, stubborn, {"cancelled"}, pod, timeout=60))["status"] == "cancelled"
    assert deaf is not None
    await until(lambda: not alive(deaf), timeout=30, what="the deaf process killed after the grace")
    runs = (await app.client.get(f"/api/v1/agents/{hostile}/runs", headers=app.auth())).json()["items"]
    ended = next(r for r in runs if r["pid"] == deaf)
    assert ended["outcome"] == "stopped" and "did not stop its cancelled task" in ended["reason"]
    assert (await health(app, hostile))["status"] == "running"  # a kill after a cancel is no crash


async def test_health_metrics_logs_and_prometheus_series_per_agent(sqlite_app: RunningApp) -> None:
    app, pod = sqlite_app, new_pod()
    agent_id = await register(app, package(packages(app), "hostile"), pod)
    job = new_job_id("say")
    line = "connecting with password=hunter2 and Authorization: Bearer abc.def-123"
    await app.client.post(
        "/api/v1/tasks",
        headers=app.auth(),
        json={**process_task(job, agent_id, "say", {"line": line}), "tenant_id": pod},
    )
    assert (await task_status(app, job, {"completed"}, pod, timeout=60))["result"] == {"said": True}

    async def logged() -> list[dict[str, Any]]:
        response = await app.client.get(f"/api/v1/agents/{agent_id}/logs", headers=app.auth())
        assert response.status_code == 200, response.text
        return [i for i in response.json()["items"] if "connecting" in i["line"]]

    async with asyncio.timeout(10):
        while not (lines := await logged()):
            await asyncio.sleep(0.05)
    assert "hunter2" not in lines[0]["line"] and "abc.def-123" not in lines[0]["line"]
    assert "password=[redacted]" in lines[0]["line"] and lines[0]["stream"] == "stderr"

    metrics = (await app.client.get(f"/api/v1/agents/{agent_id}/metrics", headers=app.auth())).json()
    assert metrics["status"] == "running" and metrics["total"]["rss_bytes"] > 0 and metrics["tasks_done"] >= 1
    assert all(p["open_files"] > 0 for p in metrics["processes"].values())
    scrape = (await app.client.get("/metrics")).text
    assert f'agent_fabric_agent_status{{agent_id="{agent_id}",status="running"}} 1.0' in scrape
    assert f'agent_fabric_agent_process_tasks_total{{agent_id="{agent_id}"}} 1.0' in scrape
    assert f'agent_fabric_agent_memory_rss_bytes{{agent_id="{agent_id}"}}' in scrape
    assert f'agent_fabric_tasks_total{{agent_id="{agent_id}",status="completed"}} 1.0' in scrape

    viewer = auth_as(app, "vic", "viewer", pod)  # reads in its tenant; lifecycle needs agents:write
    assert (await app.client.get(f"/api/v1/agents/{agent_id}/logs", headers=viewer)).status_code == 200
    assert (await app.client.post(f"/api/v1/agents/{agent_id}/stop", headers=viewer)).status_code == 403
    found = await health(app, agent_id)
    assert found["source"] == "runtime" and found["heartbeat"]["agent_id"] == agent_id
    assert found["status"] == "running" and found["since"]  # the registry's part is there too
    outsider = auth_as(app, "eve", "pod_admin", new_pod())
    assert (await app.client.get(f"/api/v1/agents/{agent_id}/health", headers=outsider)).status_code == 404
    assert (await app.client.post(f"/api/v1/agents/{agent_id}/stop", headers=outsider)).status_code == 404


async def test_the_pool_keeps_min_idle_warm_grows_with_demand_and_shrinks_back(tmp_path: Path, nats_url: str) -> None:
    (tmp_path / "packages").mkdir()
    fast_idle = FAST.model_copy(update={"idle_seconds": 1.0})
    async with running_app(process_settings(tmp_path, nats_url, None, None, process=fast_idle)) as app:
        pod = new_pod()
        agent_id = await register(app, package(packages(app), "echo", AGENT_MIN_IDLE="2"), pod)
        await app.client.post(f"/api/v1/agents/{agent_id}/start", headers=app.auth())
        warm = await wait_health(app, agent_id, lambda h: sum(p["state"] == "idle" for p in h["processes"]) == 2)
        assert len(warm["processes"]) == 2
        jobs = [new_job_id("burst") for _ in range(4)]
        for job in jobs:
            body = {**process_task(job, agent_id, "sleep", {"seconds": 120}), "tenant_id": pod}
            assert (await app.client.post("/api/v1/tasks", headers=app.auth(), json=body)).status_code == 202
        # Four at once: max_concurrent_tasks (4 by default) processes busy, none beyond.
        busy = await wait_health(app, agent_id, lambda h: h["busy"] == 4, timeout=90)
        assert len(busy["processes"]) == 4
        for job in jobs:  # done with them: the agent stops each at once
            await app.client.post(f"/api/v1/tasks/{job}/cancel?tenant_id={pod}", headers=app.auth())
        for job in jobs:
            assert (await task_status(app, job, {"cancelled"}, pod, timeout=60))["status"] == "cancelled"
        shrunk = await wait_health(
            app, agent_id, lambda h: len(h["processes"]) == 2 and all(p["state"] == "idle" for p in h["processes"]), 30
        )
        assert shrunk["busy"] == 0
        runs = (await app.client.get(f"/api/v1/agents/{agent_id}/runs", headers=app.auth())).json()["items"]
        assert any(r["reason"] == "idle: the pool shrinks" and r["outcome"] == "stopped" for r in runs)


async def test_an_error_rate_over_the_threshold_raises_one_alert(tmp_path: Path, nats_url: str, nc: Client) -> None:
    (tmp_path / "packages").mkdir()
    touchy = FAST.model_copy(update={"alert_errors": 3, "alert_window_seconds": 120})
    async with running_app(process_settings(tmp_path, nats_url, None, None, process=touchy)) as app:
        pod = new_pod()
        agent_id = await register(app, package(packages(app), "echo"), pod)
        async with collect(nc, "agent.alerts.agents") as alerts:
            for n in range(4):
                job = new_job_id(f"fail{n}")
                body = {**process_task(job, agent_id, "fail", {"code": "bad_input"}), "tenant_id": pod}
                await app.client.post("/api/v1/tasks", headers=app.auth(), json=body)
                record = await task_status(app, job, {"failed"}, pod, timeout=60)
                assert record["error"]["code"] == "bad_input"
            await until(lambda: [a for a in alerts if a["data"]["status"] == "error_rate"], what="the error-rate alert")
            await asyncio.sleep(0.3)
        rate = [a["data"] for a in alerts if a["data"]["status"] == "error_rate"]
        assert len(rate) == 1 and rate[0]["errors"] == 3 and rate[0]["agent_id"] == agent_id


async def test_a_task_waiting_for_a_process_survives_a_restart(sqlite_app: RunningApp) -> None:
    app, pod = sqlite_app, new_pod()
    agent_id = await register(app, package(packages(app), "echo"), pod)
    sleepers = [new_job_id("sleeper") for _ in range(4)]
    for job in sleepers:  # every process of the agent (max_concurrent_tasks: 4) busy
        body = {**process_task(job, agent_id, "sleep", {"seconds": 3}), "tenant_id": pod}
        await app.client.post("/api/v1/tasks", headers=app.auth(), json=body)
    await wait_health(app, agent_id, lambda h: h["busy"] == 4, timeout=90)
    waiter = new_job_id("waiter")
    body = {**process_task(waiter, agent_id, "echo", {"x": 1}), "tenant_id": pod}
    await app.client.post("/api/v1/tasks", headers=app.auth(), json=body)
    pools = app.fabric.processes.lifecycle.pools
    await until(lambda: pools[agent_id].waiting == 1, timeout=30, what="the fifth task waiting for a process")
    old_pool = pools[agent_id]
    response = await app.client.post(f"/api/v1/agents/{agent_id}/restart", headers=app.auth())
    assert response.status_code == 202, response.text
    assert pools[agent_id] is not old_pool and pools[agent_id].status == "running"
    done = await task_status(app, waiter, {"completed", "failed"}, pod, timeout=60)
    assert done["status"] == "completed" and done["result"] == {"x": 1}
    for job in sleepers:  # drained: they finished on the old processes
        assert (await task_status(app, job, {"completed", "failed"}, pod, timeout=30))["status"] == "completed"


async def test_a_package_asking_for_no_isolation_is_refused_unless_allowed(sqlite_app: RunningApp) -> None:
    app, pod = sqlite_app, new_pod()
    agent_id = await register(app, package(packages(app), "echo", AGENT_ISOLATION="none"), pod)
    job = new_job_id("bare")
    await app.client.post(
        "/api/v1/tasks", headers=app.auth(), json={**process_task(job, agent_id, "echo"), "tenant_id": pod}
    )
    record = await task_status(app, job, {"failed"}, pod, timeout=30)
    assert record["error"]["code"] == "isolation_refused" and "ALLOW_UNISOLATED" in record["error"]["message"]
    response = await app.client.post(f"/api/v1/agents/{agent_id}/start", headers=app.auth())
    assert response.status_code == 422 and response.json()["code"] == "isolation_refused"
