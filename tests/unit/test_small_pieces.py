"""Wire names, SSE ids, log redaction, builtin task checks, admission rules."""

from __future__ import annotations

import logging

import pytest

from agent_fabric import names
from agent_fabric.admission.checks import Admission
from agent_fabric.agent_zero.fleet import Fleet
from agent_fabric.drivers.factory import build_drivers
from agent_fabric.errors import InvalidTask
from agent_fabric.outbound.results import result_subject_status
from agent_fabric.outbound.sse import parse_event_id
from agent_fabric.settings import Settings
from agent_fabric.tasks import TaskSpec, TaskStatus
from agent_fabric.telemetry.logging import JsonFormatter, redact


def spec(**over: object) -> TaskSpec:
    data: dict[str, object] = {"job_id": "j", "agent_definition": {"runtime": "builtin"}, "task": {"type": "echo"}}
    data.update(over)
    return TaskSpec.model_validate(data)


def test_names_follow_the_contract() -> None:
    assert names.TASK_STREAM == "AGENT_EXECUTION" and names.TASK_SUBJECTS == "agent.execute.*"
    assert [names.consumer_name(p) for p in names.PRIORITIES][0] == "agent-executor-workers-critical"
    assert names.redis_progress_channel("j1") == "langgraph:stream:j1"
    # '.' in ids must not split NATS subject tokens.
    assert names.nats_progress_subject("pod.1", "a.b") == "agent.progress.pod%2E1.a%2Eb"


def test_result_subjects() -> None:
    assert result_subject_status(TaskStatus.COMPLETED) == "completed"
    for failure in (TaskStatus.FAILED, TaskStatus.REJECTED, TaskStatus.TIMED_OUT):
        assert result_subject_status(failure) == "failed"
    assert result_subject_status(TaskStatus.CANCELLED) == "cancelled"


@pytest.mark.parametrize(
    "value, expected",
    [("2-5", (2, 5)), (" 0-0 ", (0, 0)), (None, None), ("", None), ("abc", None), ("1-x", None), ("-1-2", None)],
)
def test_parse_event_id(value: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_event_id(value) == expected


def test_redaction_masks_tokens_and_passwords() -> None:
    text = (
        "auth Bearer abc.def.ghi to postgresql+asyncpg://user:hunter2@db:5432/x"
        " token eyJhbGciOiJIUzI1.eyJzdWIiOiJ4In0.sig"
    )
    masked = redact(text)
    assert "hunter2" not in masked and "abc.def.ghi" not in masked and "eyJhbGciOiJIUzI1" not in masked
    record = logging.LogRecord("x", logging.INFO, "f", 1, "connecting", None, None)
    record.url = "redis://:s3cret@cache:6379/0"
    assert "s3cret" not in JsonFormatter().format(record)


def test_builtin_checks_task_types_and_inputs() -> None:
    admission = Admission(build_drivers(Settings(), Fleet(Settings().agent_zero)))
    admission.check(spec())
    admission.check(spec(task={"type": "sleep", "input": {"seconds": 1.5}}))
    for bad, code in [
        ({"type": "dance"}, "unknown_task_type"),
        ({"type": "sleep", "input": {"seconds": True}}, "invalid_task"),
        ({"type": "sleep", "input": {"seconds": -1}}, "invalid_task"),
    ]:
        with pytest.raises(InvalidTask) as refused:
            admission.check(spec(task=bad))
        assert refused.value.code == code


def test_unbuilt_runtimes_and_self_dependencies_are_refused_not_ignored() -> None:
    admission = Admission(build_drivers(Settings(), Fleet(Settings().agent_zero)))
    with pytest.raises(InvalidTask) as refused:
        admission.check(spec(agent_definition={"runtime": "agent-zero"}))
    assert refused.value.code == "runtime_unavailable"
    admission.check(spec(depends_on=["other"]))  # held at admit(), in the database
    with pytest.raises(InvalidTask) as refused:
        admission.check(spec(depends_on=["other", "j"]))
    assert refused.value.code == "dependency_cycle" and "j -> j" in refused.value.message
