"""/api/v2/agent/tasks: the POD's tasks (seed 000 req. 1.2, 2.2), through the v1 machinery.

A POD administrator (or an admin naming the POD) submits, lists and reads the POD's tasks and
decides those waiting for approval. Submission is POST /api/v1/tasks's path (the same Submitter:
admission, approval gate, budget, JetStream); the runtime defaults to agent-zero, whose profile
the task type picks (AGENT_FABRIC_AGENT_ZERO_PROFILE_ROUTES). DEPLOY_GPU, TERMINATE_GPU and
SCALE_GPU park for approval unless a POD policy says otherwise (AGENT_FABRIC_POLICY_APPROVAL_
REQUIRED_ACTIONS). Approve and reject decide the task's pending approval with the usual rules:
never by its requester, only by named approvers where the policy names them; reject needs a reason.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agent_fabric.admission.checks import Actor
from agent_fabric.errors import Forbidden, NotFound
from agent_fabric.inbound.api.body import read_limited
from agent_fabric.inbound.api.deps import Offset
from agent_fabric.inbound.api.pod import Pod, PodCall
from agent_fabric.inbound.api.presenters import task_view
from agent_fabric.inbound.api.tasks import load_task, validate_task
from agent_fabric.storage.approval_store import ApprovalRecord
from agent_fabric.storage.decision_store import DecisionRecord
from agent_fabric.storage.task_store import TaskRecord
from agent_fabric.tasks import JOB_ID_PATTERN, TaskStatus

router = APIRouter(prefix="/api/v2/agent/tasks", tags=["agent-v2"])

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The task's job id.")]
DEFAULT_AGENT = {"runtime": "agent-zero"}


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000, description="Why (optional).")


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(..., min_length=1, max_length=2000, description="Why: required.")


def _links(job_id: str, tenant_id: str) -> dict[str, str]:
    base = f"/api/v2/agent/tasks/{job_id}?tenant_id={tenant_id}"
    return {
        "self": base,
        "approve": f"/api/v2/agent/tasks/{job_id}/approve?tenant_id={tenant_id}",
        "reject": f"/api/v2/agent/tasks/{job_id}/reject?tenant_id={tenant_id}",
        "events": f"/api/v1/tasks/{job_id}/events?tenant_id={tenant_id}",
    }


def approval_brief(approval: ApprovalRecord) -> dict[str, Any]:
    return {
        "id": approval.id,
        "status": approval.status,
        "approvers": approval.approvers,
        "requested_by": approval.requested_by,
        "expires_at": approval.expires_at,
        "decided_by": approval.decided_by,
        "decided_at": approval.decided_at,
        "reason": approval.reason,
    }


def decision_brief(decision: DecisionRecord) -> dict[str, Any]:
    return {"id": decision.id, "status": decision.status, "link": f"/api/v2/agent/decisions/{decision.id}"}


async def _task(pod: PodCall, job_id: str) -> TaskRecord:
    record = await pod.fabric.store.get(pod.tenant_id, job_id)
    if record is None:
        raise NotFound(f"no task {job_id!r} in POD {pod.tenant_id!r}")
    return record


async def _detail(pod: PodCall, record: TaskRecord) -> dict[str, Any]:
    governance = pod.fabric.governance
    view = {**task_view(record), "links": _links(record.job_id, record.tenant_id)}
    approval = await governance.approvals.reader.for_job(record.tenant_id, record.job_id)
    view["approval"] = approval_brief(approval) if approval else None
    decision = await governance.decisions.reader.for_task(record.tenant_id, record.job_id)
    view["decision"] = decision_brief(decision) if decision else None
    return view


@router.post("", status_code=202, summary="Submit a task to the POD's agents")
async def submit_task(request: Request, pod: Pod) -> JSONResponse:
    """The body of POST /api/v1/tasks; `agent_definition` defaults to the agent-zero runtime."""
    data = load_task(await read_limited(request, pod.fabric.settings.max_event_bytes))
    named = data.setdefault("tenant_id", pod.tenant_id)
    if named != pod.tenant_id:
        raise Forbidden(f"this request acts in POD {pod.tenant_id!r}; the task names {named!r}")
    data.setdefault("agent_definition", dict(DEFAULT_AGENT))
    spec = validate_task(data)
    submitted = await pod.fabric.scheduler.submit(
        spec, actor=Actor(pod.actor, pod.principal.role), trace=request.headers
    )
    record = await _task(pod, spec.job_id)
    body = {**await _detail(pod, record), "created": submitted.created}
    response = pod.reply(body, 202)
    response.headers["Location"] = body["links"]["self"]
    return response


@router.get("", summary="The POD's tasks, newest first")
async def list_tasks(
    pod: Pod,
    status: Annotated[TaskStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> JSONResponse:
    records = await pod.fabric.store.list_tasks(
        tenant_id=pod.tenant_id, status=status.value if status else None, limit=limit, offset=offset
    )
    items = [{**task_view(r), "links": _links(r.job_id, r.tenant_id)} for r in records]
    return pod.reply({"pod_id": pod.tenant_id, "items": items, "limit": limit, "offset": offset})


@router.get("/{job_id}", summary="A task: status, result, its approval and decision")
async def get_task(job_id: JobId, pod: Pod) -> JSONResponse:
    return pod.reply(await _detail(pod, await _task(pod, job_id)))


async def _decide(pod: PodCall, job_id: str, *, approve: bool, reason: str | None) -> JSONResponse:
    record = await _task(pod, job_id)
    desk = pod.fabric.governance.approvals
    approval = await desk.reader.for_job(pod.tenant_id, job_id)
    if approval is None:
        raise NotFound(f"task {job_id!r} has no approval to decide", code="no_approval")
    await desk.decide(approval.id, approve=approve, principal=pod.principal, reason=reason)
    return pod.reply(await _detail(pod, await _task(pod, record.job_id)))


@router.post("/{job_id}/approve", summary="Approve the task's pending approval: it runs")
async def approve_task(job_id: JobId, pod: Pod, body: Annotated[ApproveBody | None, Body()] = None) -> JSONResponse:
    return await _decide(pod, job_id, approve=True, reason=body.reason if body else None)


@router.post("/{job_id}/reject", summary="Reject the task's pending approval, with a reason: it ends rejected")
async def reject_task(job_id: JobId, pod: Pod, body: RejectBody) -> JSONResponse:
    return await _decide(pod, job_id, approve=False, reason=body.reason)
