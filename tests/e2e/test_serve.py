"""The running process, as users and operators meet it: `agent-fabric serve` on embedded defaults,
a NATS publisher, kill -9 mid-task, SIGTERM drain. Real processes, real services."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest

from agent_fabric import names
from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def token(env: dict[str, str], role: str = "admin") -> str:
    out = subprocess.run(
        [sys.executable, "-m", "agent_fabric", "token", "--role", role],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def wait_for(url: str, tok: str, job: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/api/v1/tasks/{job}", headers={"Authorization": f"Bearer {tok}"}, timeout=5)
        if response.status_code == 200 and response.json()["status"] in statuses:
            return dict(response.json())
        time.sleep(0.1)
    raise AssertionError(f"{job} did not reach {statuses} in {timeout}s")


def submit(url: str, tok: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/tasks", json=body, headers={"Authorization": f"Bearer {tok}"}, timeout=10)


def sleep_job(job: str, seconds: float) -> dict[str, Any]:
    return {
        "job_id": job,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": "sleep", "input": {"seconds": seconds}},
    }


def test_embedded_defaults_newcomer_path(tmp_path: Path) -> None:
    """`make run`'s command on nothing but the clone: bundled nats-server, SQLite; token; curl."""
    env = {"AGENT_FABRIC_STATE_DIR": str(tmp_path / "state"), "AGENT_FABRIC_JWT_SECRET": ""}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_FABRIC_")}
    server = ServeProcess(tmp_path / "state", {})
    server.env = {
        **clean,
        "AGENT_FABRIC_STATE_DIR": env["AGENT_FABRIC_STATE_DIR"],
        "AGENT_FABRIC_HTTP_PORT": str(server.port),
        "AGENT_FABRIC_HTTP_HOST": "127.0.0.1",
    }
    server.start()
    try:
        tok = subprocess.run(
            [sys.executable, "-m", "agent_fabric", "token", "--role", "admin"],
            env={**clean, "AGENT_FABRIC_STATE_DIR": env["AGENT_FABRIC_STATE_DIR"]},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        body = {
            "job_id": "hello",
            "agent_definition": {"runtime": "builtin"},
            "task": {"type": "echo", "input": {"msg": "hi"}},
        }
        assert submit(server.url, tok, body).status_code == 202
        task = wait_for(server.url, tok, "hello", {"completed"})
        assert task["result"] == {"msg": "hi"}
        assert (tmp_path / "state" / "fabric.db").exists() and (tmp_path / "state" / "nats").is_dir()
        assert (tmp_path / "state" / "jwt-secret").stat().st_mode & 0o777 == 0o600
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "agent_fabric_tasks_total" in metrics
    finally:
        server.stop()
    assert "Traceback" not in server.log()


async def completed_results_for(nats_url: str, job: str) -> list[dict[str, Any]]:
    """Every result for `job` stored in AGENT_STATUS (what a durable subscriber would receive)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe("agent.status.completed", durable=None, stream=names.STATUS_STREAM)
        found: list[dict[str, Any]] = []
        while True:
            try:
                msgs = await sub.fetch(100, timeout=1)
            except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either when a fetch runs out
                break
            for msg in msgs:
                event = orjson.loads(msg.data)
                if event["data"]["job_id"] == job:
                    found.append(event)
        return found
    finally:
        await nc.close()


def test_kill_9_mid_task_loses_nothing_and_completes_once(
    tmp_path: Path, replica_env: dict[str, str], nats_url: str
) -> None:
    first = ServeProcess(tmp_path / "a", replica_env, "a").start()
    tok = token(replica_env)
    job = f"kill9-{uuid.uuid4().hex[:8]}"
    core_results: list[bytes] = []

    async def listen() -> nats.aio.client.Client:
        nc = await nats.connect(nats_url)

        async def on_msg(msg: Any) -> None:
            core_results.append(msg.data)

        await nc.subscribe("agent.status.completed", cb=on_msg)
        await nc.flush()
        return nc

    loop = asyncio.new_event_loop()
    listener = loop.run_until_complete(listen())
    replicas: list[ServeProcess] = []
    try:
        assert submit(first.url, tok, sleep_job(job, 6)).status_code == 202
        wait_for(first.url, tok, job, {"running"})
        time.sleep(2.5)  # at least two checkpoints written
        first.kill9()
        # A restarted process and another replica race for the redelivery; exactly one resumes it.
        replicas = [
            ServeProcess(tmp_path / "b", replica_env, "b").start(),
            ServeProcess(tmp_path / "c", replica_env, "c").start(),
        ]
        task = wait_for(replicas[0].url, tok, job, {"completed", "failed"}, timeout=60)
        assert task["status"] == "completed", task
        assert task["attempts"] == 2
        assert task["result"]["resumed_from"] >= 2.0  # resumed from its checkpoint, not from zero
        loop.run_until_complete(asyncio.sleep(1.5))
        stored = loop.run_until_complete(completed_results_for(nats_url, job))
        assert len(stored) == 1
        assert len([r for r in core_results if orjson.loads(r)["data"]["job_id"] == job]) == 1
    finally:
        for replica in replicas:
            replica.stop()
        loop.run_until_complete(listener.close())
        loop.close()


def test_sigterm_drains_running_task_within_grace(tmp_path: Path, replica_env: dict[str, str]) -> None:
    env = {**replica_env, "AGENT_FABRIC_SHUTDOWN_GRACE_SECONDS": "15"}
    server = ServeProcess(tmp_path / "a", env, "a").start()
    tok = token(env)
    job = f"drain-{uuid.uuid4().hex[:8]}"
    # 3 s: long enough that a loaded machine's status poll still sees it running before it ends.
    submit(server.url, tok, sleep_job(job, 3))
    wait_for(server.url, tok, job, {"running"})
    server.sigterm()
    # uvicorn re-raises the signal after its graceful shutdown, so the status reports SIGTERM.
    assert server.wait(timeout=20) in (0, -15), server.log()[-4000:]
    assert '"handed_back_running":0' in server.log(), server.log()[-4000:]
    checker = ServeProcess(tmp_path / "b", env, "b").start()
    try:
        task = wait_for(checker.url, tok, job, {"completed"}, timeout=5)
        assert task["attempts"] == 1, (task, server.log()[-4000:])
    finally:
        checker.stop()


def test_sigterm_past_grace_hands_the_task_back(tmp_path: Path, replica_env: dict[str, str]) -> None:
    # A 60 s ack wait and lease: a task that was not handed back could not run again within the
    # 30 s this test waits, so finishing in time is the proof, however slow the second start is.
    env = {
        **replica_env,
        "AGENT_FABRIC_SHUTDOWN_GRACE_SECONDS": "0.5",
        "AGENT_FABRIC_NATS_ACK_WAIT_SECONDS": "60",
    }
    server = ServeProcess(tmp_path / "a", env, "a").start()
    tok = token(env)
    job = f"handback-{uuid.uuid4().hex[:8]}"
    submit(server.url, tok, sleep_job(job, 5))
    wait_for(server.url, tok, job, {"running"})
    time.sleep(1.5)
    server.sigterm()
    assert server.wait(timeout=20) in (0, -15)
    assert '"handed_back_running":1' in server.log()
    other = ServeProcess(tmp_path / "b", env, "b").start()
    try:
        try:
            task = wait_for(other.url, tok, job, {"completed"}, timeout=30)
        except AssertionError:
            print("=== A ===", server.log()[-6000:])
            print("=== B ===", other.log()[-6000:])
            raise
        assert task["attempts"] == 2 and task["result"]["resumed_from"] >= 1.0
    finally:
        other.stop()


def test_nats_publisher_gets_result_from_running_process(
    tmp_path: Path, replica_env: dict[str, str], nats_url: str
) -> None:
    server = ServeProcess(tmp_path / "a", replica_env, "a").start()
    job = f"pub-{uuid.uuid4().hex[:8]}"

    async def publish_and_wait() -> dict[str, Any]:
        nc = await nats.connect(nats_url)
        try:
            sub = await nc.subscribe("agent.status.*")
            await nc.flush()
            event = {
                "specversion": "1.0",
                "id": uuid.uuid4().hex,
                "source": "e2e",
                "type": "agent.execute",
                "data": {
                    "job_id": job,
                    "agent_definition": {"runtime": "builtin"},
                    "task": {"type": "echo", "input": {"from": "nats"}},
                },
            }
            publisher = {"Authorization": f"Bearer {token(replica_env)}"}  # as over HTTP (issue 15)
            await nc.jetstream().publish("agent.execute.normal", orjson.dumps(event), headers=publisher)
            async with asyncio.timeout(20):
                while True:
                    msg = await sub.next_msg(timeout=20)
                    data = orjson.loads(msg.data)
                    if data["data"]["job_id"] == job and msg.subject == "agent.status.completed":
                        return dict(data)
        finally:
            await nc.close()

    try:
        result = asyncio.run(publish_and_wait())
        assert result["data"]["result"] == {"from": "nats"}
    finally:
        server.stop()
