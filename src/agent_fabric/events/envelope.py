"""Reading task CloudEvents off the wire, and writing the fabric's own events.

HTTP and NATS carry the same event: structured mode (the whole event as JSON) or binary mode
(`ce-*` headers, the data as the body). Both doors come through `parse_task_event`, so a task
is validated once, the same way, whichever door it used.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from cloudevents.core.bindings.http import CE_PREFIX, HTTPMessage, from_http_event
from cloudevents.core.exceptions import BaseCloudEventException
from pydantic import ValidationError

from agent_fabric import names
from agent_fabric.errors import InvalidEvent, InvalidTask, PayloadTooLarge, field_errors
from agent_fabric.events.json_limits import DEFAULT_MAX_JSON_DEPTH, check_json_depth
from agent_fabric.events.structured import read_structured
from agent_fabric.tasks import DEFAULT_TENANT, JOB_ID_PATTERN, TENANT_ID_PATTERN, TaskSpec

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
TRACE_KEYS = ("traceparent", "tracestate")  # the CloudEvents Distributed Tracing extension
_JOB_ID = re.compile(JOB_ID_PATTERN)
_TENANT_ID = re.compile(TENANT_ID_PATTERN)


@dataclass(frozen=True)
class TaskEvent:
    """A validated `agent.execute` CloudEvent."""

    id: str
    source: str
    spec: TaskSpec
    # W3C trace context from the Distributed Tracing extension (`traceparent`, `tracestate`).
    trace: Mapping[str, str] | None = None


def parse_task_event(
    headers: Mapping[str, str],
    body: bytes,
    *,
    max_bytes: int,
    default_tenant: str | None = None,
    default_user: str | None = None,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> TaskEvent:
    """Parse and validate one task event; raise InvalidEvent, InvalidTask or PayloadTooLarge.

    Nothing else escapes: JSON nested deeper than `max_depth` is refused before any parser
    recurses into it, and a parser failure of any other kind is reported as InvalidEvent.

    InvalidTask carries the job_id and tenant_id whenever they could be read, so the caller
    can answer with a failure event instead of a dead-letter record.

    `default_tenant` / `default_user`: the task's tenant and `metadata.user` where the payload
    names none (the credential's, as the door decides), set before validation rather than by a
    copy of the validated spec.
    """
    if len(body) > max_bytes:
        job_id, tenant_id = _peek_ids(body)
        raise InvalidTask(
            f"event is {len(body)} bytes, the limit is {max_bytes}",
            code=PayloadTooLarge.code,
            job_id=job_id,
            tenant_id=tenant_id,
        )
    try:
        check_json_depth(body, max_depth)
    except InvalidEvent as exc:
        job_id, tenant_id = _peek_ids(body)  # orjson stops at its own depth limit, never recurses
        if job_id is not None:
            raise InvalidTask(exc.message, code=exc.code, job_id=job_id, tenant_id=tenant_id) from None
        raise
    # Binary mode (any ce-* header) and whatever the one-pass reader declines go through the SDK.
    fast = None if _binary_mode(headers) else read_structured(body)
    attributes, raw_data = (fast, fast.get("data")) if fast is not None else _read_with_sdk(headers, body)
    event_type = attributes["type"]

    data = _data_as_object(raw_data)
    job_id, tenant_id = _ids_from(data)
    if event_type != names.TASK_EVENT_TYPE:
        raise InvalidTask(
            f"CloudEvent type must be {names.TASK_EVENT_TYPE!r}, got {event_type!r}",
            code=InvalidEvent.code,
            job_id=job_id,
            tenant_id=tenant_id,
        )
    if data is None:
        raise InvalidEvent("CloudEvent data must be a JSON object holding the task")
    if default_tenant is not None and "tenant_id" not in data:
        data = {**data, "tenant_id": default_tenant}
    if default_user is not None:
        metadata = data.get("metadata", {})
        if isinstance(metadata, dict) and "user" not in metadata:  # (anything else: validation says why)
            data = {**data, "metadata": {**metadata, "user": default_user}}
    try:
        spec = TaskSpec.model_validate(data)
    except ValidationError as exc:
        detail, errors = field_errors(exc.errors(), root="data")
        raise InvalidTask(f"task data is invalid: {detail}", job_id=job_id, tenant_id=tenant_id, errors=errors) from exc
    trace = {key: str(value) for key in TRACE_KEYS if (value := attributes.get(key))}
    return TaskEvent(id=str(attributes["id"]), source=str(attributes["source"]), spec=spec, trace=trace or None)


def _read_with_sdk(headers: Mapping[str, str], body: bytes) -> tuple[Mapping[str, Any], Any]:
    """The attributes the door reads, and the data, as the CloudEvents SDK reads them (either mode)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        event = from_http_event(HTTPMessage(headers=lowered, body=body))
    except (ValueError, BaseCloudEventException, AttributeError, TypeError, RecursionError) as exc:
        job_id, tenant_id = _peek_ids(body)
        message = f"not a CloudEvent: {_first_line(exc)}"
        if job_id is not None:
            raise InvalidTask(message, code=InvalidEvent.code, job_id=job_id, tenant_id=tenant_id) from exc
        raise InvalidEvent(message) from exc
    fields = {"id": event.get_id(), "source": event.get_source(), "type": event.get_type()}
    return fields | {key: event.get_extension(key) for key in TRACE_KEYS}, event.get_data()


def _binary_mode(headers: Mapping[str, str]) -> bool:
    """Whether the SDK reads these headers as binary mode: any ce-* header."""
    for key in headers:
        if key.lower().startswith(CE_PREFIX):
            return True
    return False


def _data_as_object(data: Any) -> dict[str, Any] | None:
    if isinstance(data, bytes | str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
    return data if isinstance(data, dict) else None


def _ids_from(data: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """The job and tenant ids if they are usable as ids, else None (never echo junk)."""
    if data is None:
        return None, None
    job_id = data.get("job_id")
    tenant_id = data.get("tenant_id", DEFAULT_TENANT)
    job_ok = isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) is not None
    tenant_ok = isinstance(tenant_id, str) and _TENANT_ID.fullmatch(tenant_id) is not None
    return (job_id if job_ok else None), (tenant_id if tenant_ok else None)


def _peek_ids(body: bytes) -> tuple[str | None, str | None]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    data = doc.get("data") if isinstance(doc.get("data"), dict) else doc
    return _ids_from(data)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def fabric_event(
    event_type: str,
    data: Mapping[str, Any],
    *,
    subject: str,
    event_id: str | None = None,
    extensions: Mapping[str, str] | None = None,
) -> bytes:
    """A structured-mode CloudEvent emitted by the fabric, as JSON bytes."""
    return orjson.dumps(
        {
            **(extensions or {}),
            "specversion": "1.0",
            "id": event_id or uuid.uuid4().hex,
            "source": names.EVENT_SOURCE,
            "type": event_type,
            "subject": subject,
            "time": datetime.now(UTC),
            "datacontenttype": "application/json",
            "data": data,
        },
        # Datetimes anywhere in the event are written by orjson in RFC 3339 with "Z" for UTC, as
        # isoformat() with the offset replaced would, for a fraction of the cost.
        option=orjson.OPT_UTC_Z,
    )
