"""kill -9 while Agent Zero works on a task: the redelivered task continues in the same chat,
without sending the task (or a new priming message) again."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_serve import submit, token, wait_for
from tests.support.agent_zero_standin import running_standin
from tests.support.serve import JWT_SECRET, ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
KEY = "standin-key-0123456789"


def serve_env(nats_url: str, postgres_url: str, standin_url: str) -> dict[str, str]:
    """Two replicas on one database, a short ack wait so a killed one's task comes back fast."""
    return {
        "AGENT_FABRIC_NATS_URL": nats_url,
        "AGENT_FABRIC_DATABASE_URL": postgres_url,
        "AGENT_FABRIC_JWT_SECRET": JWT_SECRET,
        "AGENT_FABRIC_NATS_ACK_WAIT_SECONDS": "3",
        "AGENT_FABRIC_AGENT_ZERO_URL": standin_url,
        "AGENT_FABRIC_AGENT_ZERO_API_KEY": KEY,
        "AGENT_FABRIC_AGENT_ZERO_POLL_SECONDS": "0.2",
    }


def test_redelivered_task_resumes_its_agent_zero_context(tmp_path: Path, nats_url: str, postgres_url: str) -> None:
    with running_standin(KEY) as (url, standin):
        env = serve_env(nats_url, postgres_url, url)
        first = ServeProcess(tmp_path / "a", env, "a").start()
        tok = token(env)
        job = f"az-kill-{uuid.uuid4().hex[:6]}"
        body = {
            "job_id": job,
            "agent_definition": {"runtime": "agent-zero"},
            "task": {"type": "CHAT", "message": "[sleep 4] long analysis"},
        }
        assert submit(first.url, tok, body).status_code == 202
        deadline = time.monotonic() + 20
        while standin.stats.messages < 2:  # primed, and the task is in the chat
            assert time.monotonic() < deadline, "the task never reached Agent Zero"
            time.sleep(0.05)
        first.kill9()
        second = ServeProcess(tmp_path / "b", env, "b").start()
        try:
            task = wait_for(second.url, tok, job, {"completed", "failed"}, timeout=40)
            assert task["status"] == "completed", task
            assert task["attempts"] == 2
            assert task["result"]["response"] == "Done: [sleep 4] long analysis"
            assert standin.stats.messages == 2  # nothing was sent twice
            events = httpx.get(
                f"{second.url}/api/v1/tasks/{job}/events", headers={"Authorization": f"Bearer {tok}"}, timeout=10
            ).text
            assert "event: progress" in events
        finally:
            second.stop()


def test_redelivered_task_resumes_in_its_fleet_agents_chat(tmp_path: Path, nats_url: str, postgres_url: str) -> None:
    """The same, for a task routed to a POD's specialist: the redelivery takes its own claim on the
    agent again (no wait for the lease) and follows the answer in the specialist's chat."""
    with running_standin(KEY) as (url, standin):
        env = serve_env(nats_url, postgres_url, url)
        first = ServeProcess(tmp_path / "a", env, "a").start()
        tok = token(env)
        auth = {"Authorization": f"Bearer {tok}"}
        pod = f"pod-{uuid.uuid4().hex[:8]}"
        agents = f"{first.url}/api/v2/agent"
        assert httpx.post(f"{agents}/fleet/start?tenant_id={pod}", headers=auth, timeout=30).status_code == 201
        spawned = httpx.post(
            f"{agents}/agents/spawn?tenant_id={pod}", headers=auth, json={"profile": "gpubroker-provider"}, timeout=30
        )
        assert spawned.status_code == 201, spawned.text
        provider = spawned.json()
        job = f"az-fleet-kill-{uuid.uuid4().hex[:6]}"
        message = "[sleep 4] long search"
        body = {
            "job_id": job,
            "tenant_id": pod,
            "agent_definition": {"runtime": "agent-zero"},
            "task": {"type": "FIND_GPU", "message": message},
        }
        assert submit(first.url, tok, body).status_code == 202
        deadline = time.monotonic() + 20
        while (provider["context_id"], message) not in standin.received:
            assert time.monotonic() < deadline, "the task never reached the specialist's chat"
            time.sleep(0.05)
        first.kill9()
        second = ServeProcess(tmp_path / "b", env, "b").start()
        try:
            deadline = time.monotonic() + 40
            while (task := httpx.get(f"{second.url}/api/v1/tasks/{job}?tenant_id={pod}", headers=auth).json())[
                "status"
            ] in ("queued", "running"):
                assert time.monotonic() < deadline, task
                time.sleep(0.1)
            assert task["status"] == "completed", task
            assert task["attempts"] == 2
            result = task["result"]
            assert (result["agent_id"], result["context_id"]) == (provider["id"], provider["context_id"])
            assert result["response"] == f"Done: {message}"
            assert standin.received.count((provider["context_id"], message)) == 1  # nothing was sent twice
            assert standin.stats.overlapping_messages == 0
            view = httpx.get(f"{second.url}/api/v2/agent/agents/{provider['id']}?tenant_id={pod}", headers=auth).json()
            assert view["status"] == "idle" and view["job_id"] is None  # the claim was released
        finally:
            second.stop()
