"""What the registry holds about an agent, and the rows it writes: AgentRecord, Transition.

Also importable from agents/registry.py (the registry's interface).
"""

from __future__ import annotations

import shlex
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent_fabric.agents.manifest import Manifest
from agent_fabric.agents.states import AgentStatus
from agent_fabric.storage.timestamps import aware, aware_or_none


def new_agent_id(agent_type: str) -> str:
    """`{agent_type}-{uuid}` (seed 004 section 4)."""
    return f"{agent_type}-{uuid.uuid4()}"


@dataclass(frozen=True)
class AgentRecord:
    id: str
    tenant_id: str | None  # None: discovered, in the fabric's catalogue, not registered
    name: str
    version: str
    agent_type: str
    description: str
    runtime: str  # "process" or "a2a" for packages on disk; "external" for agents registered without one
    package_path: Path | None
    command: str | None  # relative to package_path
    subscribed_topics: tuple[str, ...]
    findings_topic: str | None
    manifest: dict[str, Any]  # every key of the package's .env.discovery
    labels: dict[str, str]
    status: AgentStatus
    status_reason: str | None
    status_changed_at: datetime
    revision: int
    created_at: datetime
    created_by: str
    registered_at: datetime | None
    updated_at: datetime

    @property
    def argv(self) -> list[str]:
        """The command as arguments; the runtime runs it with `package_path` as working directory."""
        return shlex.split(self.command) if self.command else []

    def view(self) -> dict[str, Any]:
        return {
            "agent_id": self.id,
            "tenant_id": self.tenant_id,
            "name": self.name,
            "version": self.version,
            "agent_type": self.agent_type,
            "description": self.description,
            "runtime": self.runtime,
            "package_path": str(self.package_path) if self.package_path else None,
            "command": self.command,
            "subscribed_topics": list(self.subscribed_topics),
            "findings_topic": self.findings_topic,
            "labels": self.labels,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "status_changed_at": self.status_changed_at,
            "revision": self.revision,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "registered_at": self.registered_at,
            "updated_at": self.updated_at,
        }


def record_from_row(row: Any) -> AgentRecord:
    m = row._mapping
    return AgentRecord(
        id=m["id"],
        tenant_id=m["tenant_id"],
        name=m["name"],
        version=m["version"],
        agent_type=m["agent_type"],
        description=m["description"],
        runtime=m["runtime"],
        package_path=Path(m["package_path"]) if m["package_path"] else None,
        command=m["command"],
        subscribed_topics=tuple(m["subscribed_topics"] or ()),
        findings_topic=m["findings_topic"],
        manifest=dict(m["manifest"] or {}),
        labels=dict(m["labels"] or {}),
        status=AgentStatus(m["status"]),
        status_reason=m["status_reason"],
        status_changed_at=aware(m["status_changed_at"]),
        revision=m["revision"],
        created_at=aware(m["created_at"]),
        created_by=m["created_by"],
        registered_at=aware_or_none(m["registered_at"]),
        updated_at=aware(m["updated_at"]),
    )


@dataclass(frozen=True)
class Transition:
    seq: int
    from_status: str | None
    to_status: str
    reason: str | None
    actor: str
    at: datetime

    def view(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "from": self.from_status,
            "to": self.to_status,
            "reason": self.reason,
            "actor": self.actor,
            "at": self.at,
        }


def catalogue_row(agent_id: str, manifest: Manifest, reason: str, actor: str, now: datetime) -> dict[str, Any]:
    """The row of a valid package found on disk: discovered, no tenant."""
    return {
        "id": agent_id,
        "tenant_id": None,
        "name": manifest.name,
        "version": manifest.version,
        "agent_type": manifest.agent_type,
        "description": manifest.description,
        "runtime": manifest.runtime,
        "package_path": str(manifest.path),
        "command": manifest.command or None,
        "subscribed_topics": list(manifest.subscribed_topics),
        "findings_topic": manifest.findings_topic,
        "manifest": manifest.values,
        "labels": {},
        "status": AgentStatus.DISCOVERED.value,
        "status_reason": reason,
        "status_changed_at": now,
        "nats_password": None,
        "revision": 1,
        "created_at": now,
        "created_by": actor,
        "registered_at": None,
        "updated_at": now,
    }


def registered_row(
    agent_id: str, name: str, version: str, agent_type: str, template: Any, actor: str, now: datetime
) -> dict[str, Any]:
    """A registered row; the package fields come from `template` (an agent of the same package)."""
    t = template._mapping if template is not None else None
    return {
        "id": agent_id,
        "name": name,
        "version": version,
        "agent_type": agent_type,
        "description": t["description"] if t else "",
        "runtime": t["runtime"] if t else "external",
        "package_path": t["package_path"] if t else None,
        "command": t["command"] if t else None,
        "subscribed_topics": t["subscribed_topics"] if t else [],
        "findings_topic": t["findings_topic"] if t else None,
        "manifest": t["manifest"] if t else {},
        "labels": {},
        "status_changed_at": now,
        "revision": 1,
        "created_at": now,
        "created_by": actor[:128],
        "updated_at": now,
    }


class Inserted:
    """A freshly inserted row in the shape record_from_row reads (no read-back needed)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._mapping = values
