"""Correlation fields for every log line: bound once where work enters, read by a logging filter.

A task's lines must join up across the HTTP door, the consumer, the driver and the result
(FR-TEL-3) without every call site passing ids. So the doors bind the ids in a ContextVar
(`bound(...)`, `task_fields(...)`); asyncio copies the context into the tasks they spawn (the
driver runs in one), and `CorrelationFilter`, on the log handler, copies the fields onto each
record. `trace_id` and `span_id` come from the current OpenTelemetry span (ids exist even when
export is off, see tracing.py), else from the task's W3C `traceparent`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar, Token

from opentelemetry import trace

from agent_fabric.tasks import TaskSpec

_FIELDS: ContextVar[Mapping[str, str] | None] = ContextVar("agent_fabric_log_fields", default=None)

# Field names a log line may carry from the context, in the order a reader wants them.
CORRELATION_KEYS = ("request_id", "trace_id", "span_id", "job_id", "tenant_id", "agent")


def current() -> dict[str, str]:
    """The fields bound here (without the span's ids)."""
    return dict(_FIELDS.get() or {})


def bound(**fields: str | None) -> _Bound:
    """Add `fields` (None values skipped) to every log line written inside the block."""
    return _Bound(fields)


class _Bound:
    """`bound`'s block. A plain class, not a @contextmanager generator: every task enters one (the
    consumer's dispatch), and the generator machinery cost three times the work."""

    __slots__ = ("_fields", "_token")
    _token: Token[Mapping[str, str] | None]

    def __init__(self, fields: Mapping[str, str | None]) -> None:
        self._fields = fields

    def __enter__(self) -> None:
        added = {k: v for k, v in self._fields.items() if v is not None}
        self._token = _FIELDS.set({**(_FIELDS.get() or {}), **added})

    def __exit__(self, *_: object) -> None:
        _FIELDS.reset(self._token)


def task_fields(spec: TaskSpec, carrier: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The fields naming a task; trace ids from its `traceparent`, for lines outside a span."""
    fields: dict[str, str | None] = {
        "job_id": spec.job_id,
        "tenant_id": spec.tenant_id,
        "agent": spec.agent_definition.label,
    }
    parts = str((carrier or {}).get("traceparent") or "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        fields["trace_id"], fields["span_id"] = parts[1], parts[2]
    return fields


class CorrelationFilter(logging.Filter):
    """Puts the bound fields and the current span's ids on each record (an explicit `extra=`
    of the same name wins). Attach it to handlers: logger filters miss propagated records."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _FIELDS.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        return True
