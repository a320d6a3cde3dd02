"""The fabric's exceptions. Each knows its HTTP status and its failure code.

The failure `code` is what users see in problem JSON (`code` member) and in failure
CloudEvents (`error.code`), so codes are stable strings, not class names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class FabricError(Exception):
    """Base of every error the fabric reports to a caller."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra


class ConfigurationError(FabricError):
    code = "configuration_error"
    title = "Configuration error"


class InvalidEvent(FabricError):
    """The payload is not a usable CloudEvent (not JSON, missing attributes, wrong type)."""

    status = 400
    code = "invalid_event"
    title = "Invalid CloudEvent"


class InvalidTask(FabricError):
    """The event is a CloudEvent but its task data breaks the schema."""

    status = 422
    code = "invalid_task"
    title = "Invalid task"

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        tenant_id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.job_id = job_id
        self.tenant_id = tenant_id
        self.errors = errors or []


class PolicyDenied(InvalidTask):
    """A policy rule denies the task (`task:<TYPE>`); over NATS it fails with this code."""

    status = 403
    code = "policy_denied"
    title = "Denied by policy"


class BudgetExceeded(InvalidTask):
    """A hard budget limit refuses new work (LIVE mode); over NATS it fails with this code."""

    status = 402
    code = "budget_exceeded"
    title = "Budget exceeded"


class QueueFull(InvalidTask):
    """The tenant or agent already has its maximum of queued tasks; over NATS it fails with this
    code. Over HTTP nothing is recorded, so the same job_id may be submitted again later."""

    status = 429
    code = "queue_full"
    title = "Queue full"

    def __init__(self, message: str, *, job_id: str | None = None, tenant_id: str | None = None, status: int = 429):
        super().__init__(message, job_id=job_id, tenant_id=tenant_id)
        self.status = status
        self.extra = {"retry_after": 1}


class InvalidDocument(FabricError):
    """A policy, budget or configuration that would not apply; `errors` says where and why."""

    status = 422
    code = "invalid_document"
    title = "Invalid document"

    def __init__(self, message: str, *, code: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, code=code)
        self.extra = {"errors": errors or []}


class PayloadTooLarge(FabricError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class Unauthenticated(FabricError):
    status = 401
    code = "unauthenticated"
    title = "Unauthenticated"


class Forbidden(FabricError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(FabricError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(FabricError):
    status = 409
    code = "conflict"
    title = "Conflict"


class InvalidRequest(FabricError):
    """A well-formed request that cannot be carried out as sent (a missing reason, say)."""

    status = 422
    code = "invalid_request"
    title = "Invalid request"


class ServiceUnavailable(FabricError):
    status = 503
    code = "unavailable"
    title = "Service unavailable"


class UpstreamFailed(FabricError):
    """An agent backend (Agent Zero) refused or failed a call the fabric made for the request."""

    status = 502
    code = "upstream_failed"
    title = "Agent backend failed"


class RateLimited(FabricError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"


def field_errors(errors: Iterable[Mapping[str, Any]], *, root: str = "body") -> tuple[str, list[dict[str, Any]]]:
    """Pydantic errors as one readable line plus `[{loc, msg}]`, for problem JSON and failure events."""
    items = [{"loc": [str(part) for part in e["loc"]], "msg": str(e["msg"])} for e in errors]
    return "; ".join(f"{'.'.join(i['loc']) or root}: {i['msg']}" for i in items), items


class TaskFailure(Exception):
    """Raised by a driver to fail a task with a code users can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
