"""RFC 9457 problem JSON for every error, with a stable `code` member."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent_fabric.audit.entries import AuditEntry
from agent_fabric.errors import FabricError, InvalidTask, field_errors

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


def problem(status: int, code: str, title: str, detail: str, instance: str, **extra: Any) -> JSONResponse:
    body = {
        "type": f"urn:agent-fabric:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": instance,
        **extra,
    }
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="agent-fabric"'
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra["retry_after"])
    return JSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(FabricError)
    async def fabric_error(request: Request, exc: FabricError) -> JSONResponse:
        if exc.status == 403:
            _audit_denied(request, exc)
        extra: dict[str, Any] = {}
        if isinstance(exc, InvalidTask):
            if exc.errors:
                extra["errors"] = exc.errors
            if exc.job_id:
                extra["job_id"] = exc.job_id
        return problem(exc.status, exc.code, exc.title, exc.message, request.url.path, **extra, **exc.extra)

    # The request did not fit the route's schema, or a model a route built from what the caller
    # sent (a merged update, say) refused it: the caller's input is wrong, so 422, never a 500.
    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def validation_error(request: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
        detail, errors = field_errors(exc.errors())
        return problem(422, "invalid_request", "Invalid request", detail, request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem(exc.status_code, code, str(exc.detail), str(exc.detail), request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return problem(
            500,
            "internal_error",
            "Internal error",
            "the fabric failed to handle this request; it is logged",
            request.url.path,
        )


def _audit_denied(request: Request, exc: FabricError) -> None:
    """Refused access attempts are part of the audit trail (seed 000, requirement 4.5)."""
    fabric = getattr(request.app.state, "fabric", None)
    principal = getattr(request.state, "principal", None)
    if fabric is None:
        return
    tenant_id = getattr(principal, "tenant_id", None)
    fabric.governance.audit.record(
        AuditEntry(
            "access_denied",
            getattr(principal, "subject", "anonymous"),
            tenant_id,
            fabric.governance.tenants.mode_for(tenant_id),
            request={"method": request.method, "path": request.url.path, "role": getattr(principal, "role", None)},
            response={"status": 403, "code": exc.code, "detail": exc.message},
        )
    )
