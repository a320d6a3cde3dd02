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


def test_redelivered_task_resumes_its_agent_zero_context(tmp_path: Path, nats_url: str, postgres_url: str) -> None:
    with running_standin(KEY) as (url, standin):
        env = {
            "AGENT_FABRIC_NATS_URL": nats_url,
            "AGENT_FABRIC_DATABASE_URL": postgres_url,
            "AGENT_FABRIC_JWT_SECRET": JWT_SECRET,
            "AGENT_FABRIC_NATS_ACK_WAIT_SECONDS": "3",
            "AGENT_FABRIC_AGENT_ZERO_URL": url,
            "AGENT_FABRIC_AGENT_ZERO_API_KEY": KEY,
            "AGENT_FABRIC_AGENT_ZERO_POLL_SECONDS": "0.2",
        }
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
