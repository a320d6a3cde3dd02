"""Pure pieces of the process runtime: the egress allowlist match, log masking, commands, the
SDK's wire (over real pipes, no fabric), Kubernetes names."""

from __future__ import annotations

import json
import os
import threading

from agent_fabric.agent_sdk import Failure, Task, _Agent, _Wire
from agent_fabric.agents.egress_proxy import host_allowed
from agent_fabric.agents.pod_spec import resource_name
from agent_fabric.agents.process_logs import AgentLogs, mask
from agent_fabric.agents.process_spec import parse_command


def test_egress_allowlist_matches_hosts_ports_and_subdomains() -> None:
    allow = ["api.example.com", "*.trusted.org", "127.0.0.1:8080"]
    assert host_allowed(allow, "api.example.com", 443)
    assert host_allowed(allow, "API.example.com", 80)
    assert host_allowed(allow, "a.b.trusted.org", 443)
    assert not host_allowed(allow, "trusted.org.evil.com", 443)
    assert not host_allowed(allow, "example.com", 443)
    assert host_allowed(allow, "127.0.0.1", 8080) and not host_allowed(allow, "127.0.0.1", 8081)
    assert not host_allowed([], "api.example.com", 443)


def test_logs_mask_secrets_and_keep_the_rest() -> None:
    line = "user=bob password=hunter2 api_key: 'abc' token=xyz Bearer eyJabc.def.ghi count=3"
    masked = mask(line)
    for secret in ("hunter2", "'abc'", "xyz"):
        assert secret not in masked
    assert "user=bob" in masked and "count=3" in masked
    logs = AgentLogs(max_lines=2)
    for n in range(3):
        logs.add("a/1", "stderr", f"line {n}\n")
    assert [item["line"] for item in logs.tail()] == ["line 1", "line 2"]


def test_commands_split_like_a_shell_without_one() -> None:
    assert parse_command("python agent.py --name 'two words'") == ["python", "agent.py", "--name", "two words"]
    assert parse_command(["./run", "x"]) == ["./run", "x"]
    assert parse_command(None) == []


def test_kubernetes_names_are_dns_labels() -> None:
    name = resource_name("Steps_Agent-" + "x" * 80)
    assert len(name) <= 63 and name == name.lower() and "_" not in name and not name.endswith("-")


def test_the_sdk_speaks_the_protocol_over_pipes() -> None:
    to_agent_r, to_agent_w = os.pipe()
    from_agent_r, from_agent_w = os.pipe()
    inp = os.fdopen(to_agent_r, "r")
    out = os.fdopen(from_agent_w, "w", buffering=1)

    def handle(task: Task) -> object:
        task.progress({"step": 1})
        task.save_checkpoint({"done": 1})
        if task.input.get("fail"):
            raise Failure("nope", "asked to fail")
        return {"echo": task.input, "checkpoint": task.checkpoint}

    agent = _Agent(handle, _Wire(out, inp))
    agent.interval = 3600
    worker = threading.Thread(target=agent.serve, daemon=True)
    worker.start()
    fabric_in = os.fdopen(from_agent_r, "r")
    fabric_out = os.fdopen(to_agent_w, "w", buffering=1)

    def read() -> dict[str, object]:
        return dict(json.loads(fabric_in.readline()))

    assert read()["type"] == "ready" and read()["type"] == "heartbeat"
    fabric_out.write(json.dumps({"type": "task", "job_id": "j1", "task": {"type": "x", "input": {"a": 1}}}) + "\n")
    assert read() == {"type": "progress", "job_id": "j1", "data": {"step": 1}}
    request = read()
    assert request["type"] == "checkpoint" and request["state"] == {"done": 1}
    fabric_out.write(json.dumps({"type": "reply", "id": request["id"], "ok": True}) + "\n")
    assert read() == {"type": "result", "job_id": "j1", "result": {"echo": {"a": 1}, "checkpoint": {"done": 1}}}
    fabric_out.write(json.dumps({"type": "task", "job_id": "j2", "task": {"type": "x", "input": {"fail": 1}}}) + "\n")
    read()
    request = read()
    fabric_out.write(json.dumps({"type": "reply", "id": request["id"], "ok": True}) + "\n")
    assert read() == {"type": "failure", "job_id": "j2", "code": "nope", "message": "asked to fail"}
    fabric_out.write(json.dumps({"type": "stop"}) + "\n")
    worker.join(timeout=5)
    assert not worker.is_alive()


def test_error_rate_alerts_once_per_window() -> None:
    from agent_fabric.agents.error_rate import ErrorRate

    rate = ErrorRate(threshold=3, window=10)
    assert [rate.record(t) for t in (0, 1)] == [None, None]
    assert rate.record(2) == 3
    assert rate.record(3) is None  # alerted within this window already
    assert rate.record(30) is None  # the old ones aged out
    assert rate.record(31) is None and rate.record(32) == 3
