"""Parsing task CloudEvents: both modes, and every way an event can be refused."""

from __future__ import annotations

import orjson
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_structured_event, to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from agent_fabric.errors import InvalidEvent, InvalidTask
from agent_fabric.events.envelope import fabric_event, parse_task_event
from agent_fabric.tasks import Priority

DATA = {"job_id": "job-1", "agent_definition": {"runtime": "builtin"}, "task": {"type": "echo", "input": {"a": 1}}}
LIMIT = 1 << 20


def event(data: object = DATA, type_: str = "agent.execute") -> CloudEvent:
    return CloudEvent(
        attributes={"type": type_, "source": "test", "id": "ev-1", "datacontenttype": "application/json"}, data=data
    )


def test_structured_and_binary_parse_to_the_same_task() -> None:
    structured = to_structured_event(event())
    binary = to_binary_event(event())
    a = parse_task_event(structured.headers, structured.body, max_bytes=LIMIT)
    b = parse_task_event(binary.headers, binary.body, max_bytes=LIMIT)
    assert a.spec == b.spec and a.id == b.id == "ev-1"
    assert a.spec.tenant_id == "default" and a.spec.priority is Priority.NORMAL


def test_default_tenant_applies_only_when_absent() -> None:
    msg = to_structured_event(event())
    assert parse_task_event(msg.headers, msg.body, max_bytes=LIMIT, default_tenant="pod-1").spec.tenant_id == "pod-1"
    msg = to_structured_event(event({**DATA, "tenant_id": "pod-2"}))
    assert parse_task_event(msg.headers, msg.body, max_bytes=LIMIT, default_tenant="pod-1").spec.tenant_id == "pod-2"


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"data": {}}', b'"text"'])
def test_unreadable_events_have_no_job_id(body: bytes) -> None:
    with pytest.raises(InvalidEvent):
        parse_task_event({}, body, max_bytes=LIMIT)


def test_wrong_type_keeps_the_job_id_for_a_failure_event() -> None:
    msg = to_structured_event(event(type_="com.example.other"))
    with pytest.raises(InvalidTask) as refused:
        parse_task_event(msg.headers, msg.body, max_bytes=LIMIT)
    assert refused.value.code == "invalid_event" and refused.value.job_id == "job-1"


@pytest.mark.parametrize(
    "data, where",
    [
        ({**DATA, "unexpected": 1}, "unexpected"),
        ({**DATA, "priority": "urgent"}, "priority"),
        ({**DATA, "timeout_seconds": -1}, "timeout_seconds"),
        ({**DATA, "agent_definition": {"runtime": "cobol"}}, "agent_definition.runtime"),
        ({**DATA, "task": {"input": {}}}, "task.type"),
    ],
)
def test_schema_errors_name_the_field(data: dict[str, object], where: str) -> None:
    msg = to_structured_event(event(data))
    with pytest.raises(InvalidTask) as refused:
        parse_task_event(msg.headers, msg.body, max_bytes=LIMIT)
    assert where in refused.value.message and refused.value.job_id == "job-1"


def test_invalid_job_id_is_not_echoed_as_an_id() -> None:
    msg = to_structured_event(event({**DATA, "job_id": "has spaces"}))
    with pytest.raises(InvalidTask) as refused:
        parse_task_event(msg.headers, msg.body, max_bytes=LIMIT)
    assert refused.value.job_id is None


def test_oversized_event_is_refused_with_its_job_id() -> None:
    msg = to_structured_event(event({**DATA, "task": {"type": "echo", "input": {"x": "y" * 5000}}}))
    with pytest.raises(InvalidTask) as refused:
        parse_task_event(msg.headers, msg.body, max_bytes=1024)
    assert refused.value.code == "payload_too_large" and refused.value.job_id == "job-1"


def test_fabric_events_are_cloudevents() -> None:
    doc = orjson.loads(fabric_event("agent.status.completed", {"job_id": "j"}, subject="j", event_id="x/j/result"))
    assert doc["specversion"] == "1.0" and doc["id"] == "x/j/result" and doc["source"] == "agent-fabric"
    assert doc["time"].endswith("Z") and doc["data"] == {"job_id": "j"}


def _structured(extra: bytes = b"", data: bytes = b'{"type": "echo", "input": {"n": 1}}') -> bytes:
    return (
        b'{"specversion": "1.0", "id": "ev-1", "source": "test", "type": "agent.execute"'
        + extra
        + b', "data": {"job_id": "job-1", "agent_definition": {"runtime": "builtin"}, "task": '
        + data
        + b"}}"
    )


# What the door reads with orjson must read exactly as the CloudEvents SDK reads it: these are the
# places where the two could part (numbers, strings, the SDK's defaults and attribute rules).
SDK_EDGES = [
    _structured(),
    _structured(data=b'{"type": "echo", "input": {"n": 123456789012345678901234567890}}'),
    _structured(data=b'{"type": "echo", "input": {"n": -9223372036854775809}}'),
    _structured(data=b'{"type": "echo", "input": {"n": NaN}}'),
    _structured(data=b'{"type": "echo", "input": {"n": 1e400}}'),
    _structured(data=b'{"type": "echo", "input": {"s": "\\ud800"}}'),
    _structured(b', "time": "2026-01-01T00:00:00Z"'),
    _structured(b', "time": "2026-01-01T00:00:00"'),
    _structured(b', "time": "yesterday"'),
    _structured(b', "subject": ""'),
    _structured(b', "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"'),
    _structured(b', "bad_name": 1'),
    _structured(b', "ext\\n": 1'),
    _structured(b', "data_base64": "e30="'),
    _structured(b', "specversion": "0.3"'),
    _structured(b', "specversion": "2.0"'),
    _structured(b', "id": ""'),
    _structured(b', "id": 7'),
    b'{"id": "ev-1", "source": "test", "type": "agent.execute", "data": {"job_id": "job-1", "agent_definition":'
    b' {"runtime": "builtin"}, "task": {"type": "echo"}}}',
]


@pytest.mark.parametrize("body", SDK_EDGES)
def test_a_structured_event_reads_as_the_cloudevents_sdk_reads_it(body: bytes) -> None:
    try:
        sdk = from_structured_event(HTTPMessage(headers={}, body=body))
    except Exception as exc:
        with pytest.raises((InvalidEvent, InvalidTask)) as refused:
            parse_task_event({}, body, max_bytes=LIMIT)
        assert refused.value.code == "invalid_event"
        assert refused.value.message == f"not a CloudEvent: {str(exc).splitlines()[0][:300]}"
        return
    parsed = parse_task_event({}, body, max_bytes=LIMIT)
    data = sdk.get_data()
    assert isinstance(data, dict)
    assert parsed.id == sdk.get_id() and parsed.source == sdk.get_source()
    assert repr(parsed.spec.task.input) == repr(data["task"].get("input", {}))
    assert parsed.trace == ({"traceparent": sdk.get_extension("traceparent")} if "traceparent" in str(body) else None)
