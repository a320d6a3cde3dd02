"""One task's log lines join up: a real `agent-fabric serve` (JSON logs at DEBUG) runs a task on
the Agent Zero stand-in, and its lines from the HTTP door, the consumer, the driver's Agent Zero
calls and the result publish all carry the same trace_id, job_id, tenant_id and agent; the HTTP
lines carry the request id the caller sent, which comes back in the response header."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.test_serve import submit, token, wait_for
from tests.support.agent_zero_standin import running_standin
from tests.support.serve import JWT_SECRET, ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
KEY = "standin-key-0123456789"


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_bytes().splitlines():
        if raw.startswith(b"{"):
            lines.append(orjson.loads(raw))
    return lines


def test_one_tasks_lines_join_up_from_the_door_to_the_result(tmp_path: Path, nats_url: str, postgres_url: str) -> None:
    with running_standin(KEY) as (standin_url, _):
        env = {
            "AGENT_FABRIC_NATS_URL": nats_url,
            "AGENT_FABRIC_DATABASE_URL": postgres_url,
            "AGENT_FABRIC_JWT_SECRET": JWT_SECRET,
            "AGENT_FABRIC_AGENT_ZERO_URL": standin_url,
            "AGENT_FABRIC_AGENT_ZERO_API_KEY": KEY,
            "AGENT_FABRIC_AGENT_ZERO_POLL_SECONDS": "0.2",
            "AGENT_FABRIC_LOG_JSON": "true",
            "AGENT_FABRIC_LOG_LEVEL": "DEBUG",
        }
        fabric = ServeProcess(tmp_path / "serve", env).start()
        try:
            tok = token(env)
            job = f"logs-{uuid.uuid4().hex[:8]}"
            request_id = f"req-{uuid.uuid4().hex[:8]}"
            body = {
                "job_id": job,
                "agent_definition": {"runtime": "agent-zero"},
                "task": {"type": "CHAT", "message": "summarise the fleet"},
            }
            accepted = httpx.post(
                f"{fabric.url}/api/v1/tasks",
                json=body,
                headers={"Authorization": f"Bearer {tok}", "X-Request-ID": request_id},
                timeout=10,
            )
            assert accepted.status_code == 202, accepted.text
            assert accepted.headers["x-request-id"] == request_id
            assert wait_for(fabric.url, tok, job, {"completed", "failed"})["status"] == "completed"
            # A caller without a request id gets one made for it; a malformed one is replaced.
            made = submit(fabric.url, tok, {**body, "job_id": f"{job}-b"})
            assert len(made.headers["x-request-id"]) == 32
            odd = httpx.get(f"{fabric.url}/health", headers={"X-Request-ID": "bad id\twith spaces"}, timeout=5)
            assert odd.headers["x-request-id"] != "bad id\twith spaces"
        finally:
            fabric.stop()
    lines = json_lines(fabric.log_path)
    mine = [line for line in lines if line.get("job_id") == job]
    messages = {line["message"] for line in mine}
    # The door, the consumer, the runner, the driver's calls to Agent Zero, the result.
    for expected in ("task accepted", "task dispatched", "task started", "agent zero call", "task finished"):
        assert expected in messages, f"no {expected!r} line for {job}: {sorted(messages)}"
    assert "result published" in messages
    trace_ids = {line.get("trace_id") for line in mine}
    assert len(trace_ids) == 1 and None not in trace_ids, f"lines of one task in several traces: {trace_ids}"
    for line in mine:
        assert line["tenant_id"] == "default", line
        assert line["agent"].startswith("agent-zero"), line
        assert len(line["span_id"]) == 16, line
    driver_calls = [line for line in mine if line["message"] == "agent zero call"]
    assert {line["operation"] for line in driver_calls} >= {"api_message"}
    assert all(line["logger"] == "agent_fabric.agent_zero.client" for line in driver_calls)
    # The HTTP lines of the request: the access line and the door's line share the request id.
    by_request = [line for line in lines if line.get("request_id") == request_id]
    assert {"http request", "task accepted"} <= {line["message"] for line in by_request}
    access = next(line for line in by_request if line["message"] == "http request")
    assert (access["route"], access["method"], access["status"]) == ("/api/v1/tasks", "POST", 202)
    accepted_line = next(line for line in by_request if line["message"] == "task accepted")
    assert accepted_line["trace_id"] in trace_ids
    # Secrets stay out: the bearer token never appears in any line.
    assert tok not in fabric.log_path.read_text()
