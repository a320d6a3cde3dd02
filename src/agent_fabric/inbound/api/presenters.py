"""How a task looks over HTTP."""

from __future__ import annotations

from typing import Any

from agent_fabric.storage.task_store import TaskRecord
from agent_fabric.tasks import TaskStatus


def task_view(record: TaskRecord) -> dict[str, Any]:
    view: dict[str, Any] = {
        "job_id": record.job_id,
        "tenant_id": record.tenant_id,
        "status": record.status.value,
        "priority": record.priority,
        "runtime": record.runtime,
        "agent": record.agent_label,
        "task": record.spec.get("task"),
        "attempts": record.attempts,
        "usage": record.usage,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "updated_at": record.updated_at,
    }
    if record.status == TaskStatus.COMPLETED:
        view["result"] = record.result
    if record.error_code:
        view["error"] = {"code": record.error_code, "message": record.error_message}
    return view
