"""Search filters for task lists (the console's task search; GET /api/v1/tasks query parameters)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent_fabric.storage.tables import tasks


@dataclass(frozen=True)
class TaskSearch:
    agent: str | None = None  # the agent label (agent_label column)
    task_type: str | None = None  # task.type inside the spec
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before

    def conditions(self) -> list[Any]:
        found: list[Any] = []
        if self.agent:
            found.append(tasks.c.agent_label == self.agent)
        if self.task_type:
            # JSON path: json_extract on SQLite, #>> on Postgres. No index: it narrows what the
            # tenant, status and time filters (indexed) already selected.
            found.append(tasks.c.spec[("task", "type")].as_string() == self.task_type)
        if self.since is not None:
            found.append(tasks.c.created_at >= self.since)
        if self.until is not None:
            found.append(tasks.c.created_at < self.until)
        return found
