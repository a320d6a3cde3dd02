"""/api/v1/tasks: submit a task (the CloudEvent's data alone), read it, list, follow its events."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_fabric.admission.checks import Actor
from agent_fabric.errors import Conflict, InvalidTask, NotFound, field_errors
from agent_fabric.fabric import Fabric
from agent_fabric.inbound.api.body import read_limited
from agent_fabric.inbound.api.deps import FabricDep, Offset, Reader, Submitter, TaskCanceller
from agent_fabric.inbound.api.presenters import task_view
from agent_fabric.outbound.sse import job_event_stream
from agent_fabric.security.deps import tenant_scope
from agent_fabric.security.tokens import Principal
from agent_fabric.storage.task_search import TaskSearch
from agent_fabric.storage.task_store import TaskRecord
from agent_fabric.tasks import JOB_ID_PATTERN, TENANT_ID_PATTERN, TaskSpec, TaskStatus

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=1000, description="Why; part of the task's final message.")


TenantQuery = Annotated[str | None, Query(pattern=TENANT_ID_PATTERN, description="Admins: which tenant.")]


def load_task(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidTask."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidTask(f"body is not JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidTask("body must be a JSON object: the task (the CloudEvent's data)")
    return data


def validate_task(data: dict[str, Any]) -> TaskSpec:
    """The task, or InvalidTask naming every problem."""
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        detail, errors = field_errors(exc.errors(), root="task")
        raise InvalidTask(f"task is invalid: {detail}", errors=errors) from None


def parse_spec(body: bytes, principal: Principal) -> TaskSpec:
    data = load_task(body)
    if "tenant_id" not in data and principal.tenant_id is not None:
        data["tenant_id"] = principal.tenant_id
    spec = validate_task(data)
    tenant_scope(principal, spec.tenant_id)
    return spec


async def submit_response(
    fabric: Fabric,
    spec: TaskSpec,
    principal: Principal,
    *,
    event_id: str | None = None,
    trace: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Submit and answer 202; `trace`: the caller's W3C trace context (traceparent), continued."""
    submitted = await fabric.scheduler.submit(
        spec, event_id=event_id, actor=Actor(principal.subject, principal.role), trace=trace
    )
    body: dict[str, Any] = {
        "job_id": spec.job_id,
        "tenant_id": spec.tenant_id,
        "status": submitted.status,
        "created": submitted.created,
        "links": {
            "self": f"/api/v1/tasks/{spec.job_id}?tenant_id={spec.tenant_id}",
            "events": f"/api/v1/tasks/{spec.job_id}/events?tenant_id={spec.tenant_id}",
        },
    }
    if submitted.approval is not None:
        body["approval"] = {
            "id": submitted.approval.id,
            "status": submitted.approval.status,
            "approvers": submitted.approval.approvers,
            "expires_at": submitted.approval.expires_at,
        }
        body["links"]["approval"] = f"/api/v1/approvals/{submitted.approval.id}"
    return JSONResponse(
        jsonable_encoder(body),
        status_code=202,
        headers={"Location": f"/api/v1/tasks/{spec.job_id}?tenant_id={spec.tenant_id}"},
    )


@router.post("", status_code=202, summary="Submit a task")
async def submit_task(request: Request, fabric: FabricDep, principal: Submitter) -> JSONResponse:
    """Queue a task. 202 with its status; the same job again with the same content is idempotent, 409 otherwise."""
    body = await read_limited(request, fabric.settings.max_event_bytes)
    return await submit_response(fabric, parse_spec(body, principal), principal, trace=request.headers)


async def find_task(fabric: Fabric, principal: Principal, job_id: str, tenant_id: str | None) -> TaskRecord:
    scope = tenant_scope(principal, tenant_id)
    if scope is not None:
        record = await fabric.store.get(scope, job_id)
        if record is None:
            raise NotFound(f"no task {job_id!r} in tenant {scope!r}")
        return record
    found = await fabric.store.find(job_id)
    if not found:
        raise NotFound(f"no task {job_id!r} in any tenant")
    if len(found) > 1:
        raise Conflict(f"job {job_id!r} exists in several tenants: pass ?tenant_id=", code="ambiguous_job")
    return found[0]


@router.get("/{job_id}", summary="A task's status and result")
async def get_task(job_id: str, fabric: FabricDep, principal: Reader, tenant_id: TenantQuery = None) -> dict[str, Any]:
    _check_job_id(job_id)
    return task_view(await find_task(fabric, principal, job_id, tenant_id))


@router.get("", summary="List tasks")
async def list_tasks(
    fabric: FabricDep,
    principal: Reader,
    tenant_id: TenantQuery = None,
    status: Annotated[TaskStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
    agent: Annotated[str | None, Query(max_length=160, description="Agent label, e.g. builtin.")] = None,
    type: Annotated[str | None, Query(max_length=128, description="Task type (task.type).")] = None,
    since: Annotated[datetime | None, Query(description="Created at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Created before (ISO 8601).")] = None,
) -> dict[str, Any]:
    scope = tenant_scope(principal, tenant_id)
    records = await fabric.store.list_tasks(
        tenant_id=scope,
        status=status.value if status else None,
        limit=limit,
        offset=offset,
        search=TaskSearch(agent=agent, task_type=type, since=since, until=until),
    )
    return {"items": [task_view(r) for r in records], "limit": limit, "offset": offset}


@router.post(
    "/{job_id}/cancel", status_code=202, summary="Cancel a task: a waiting one at once, a running one's driver"
)
async def cancel_task(
    job_id: str,
    fabric: FabricDep,
    principal: TaskCanceller,
    tenant_id: TenantQuery = None,
    request: Annotated[CancelRequest | None, Body()] = None,
) -> JSONResponse:
    """202 `cancelled` for a task that had not started; 202 `running` with `cancel_requested` for a
    running one (it ends `cancelled` within moments, on whichever replica runs it); 200 with
    `already: true` when it was cancelled before; 409 `task_finished` if it ended otherwise first."""
    _check_job_id(job_id)
    record = await find_task(fabric, principal, job_id, tenant_id)
    reason = (request.reason.strip() or None) if request and request.reason else None
    done = await fabric.scheduler.cancel_task(
        record.job_id, tenant_id=record.tenant_id, actor=principal.subject, reason=reason
    )
    if done.outcome == "not_found":
        raise NotFound(f"no task {job_id!r} in tenant {record.tenant_id!r}")
    if done.outcome == "finished":
        status = done.status.value if done.status else "unknown"
        raise Conflict(f"task {job_id!r} already ended {status}", code="task_finished", task_status=status)
    body = {
        "job_id": done.job_id,
        "tenant_id": done.tenant_id,
        "status": done.status.value if done.status else None,
        "cancel_requested": True,
        "already": done.outcome in ("already_cancelled", "already_requested"),
        "links": {"self": f"/api/v1/tasks/{job_id}?tenant_id={done.tenant_id}"},
    }
    return JSONResponse(body, status_code=200 if done.outcome == "already_cancelled" else 202)


@router.get("/{job_id}/events", summary="Follow a task's events (SSE, resumable with Last-Event-ID)")
async def task_events(
    job_id: str,
    fabric: FabricDep,
    principal: Reader,
    tenant_id: TenantQuery = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    _check_job_id(job_id)
    record = await find_task(fabric, principal, job_id, tenant_id)
    stream = job_event_stream(fabric.store, fabric.bus, record.tenant_id, record.job_id, last_event_id)
    return StreamingResponse(
        stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


_JOB_ID = re.compile(JOB_ID_PATTERN)


def _check_job_id(job_id: str) -> None:
    if _JOB_ID.fullmatch(job_id) is None:
        raise NotFound(f"{job_id!r} is not a job id (1-128 of A-Z a-z 0-9 . _ : -)")
