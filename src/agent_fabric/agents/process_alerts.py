"""Alert events about process agents: a CloudEvent on agent.alerts.agents (stream AGENT_GOVERNANCE,
so a subscriber that was away still gets it) and an `agent.alert` audit entry, for every status
change of an agent's processes on a replica (started, stopped, failed for good after a crash loop)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from nats.js import JetStreamContext

from agent_fabric import names
from agent_fabric.audit.entries import AuditEntry
from agent_fabric.audit.writer import AuditWriter
from agent_fabric.events.envelope import fabric_event
from agent_fabric.tenants import TenantRegistry

log = logging.getLogger(__name__)


class AgentAlerts:
    def __init__(self, js: JetStreamContext, audit: AuditWriter, tenants: TenantRegistry, owner: str) -> None:
        self._js = js
        self._audit = audit
        self._tenants = tenants
        self._owner = owner

    async def raise_alert(self, agent_id: str, tenant_id: str, status: str, reason: str, **detail: Any) -> None:
        data = {
            "agent_id": agent_id,
            "tenant_id": tenant_id,
            "status": status,
            "reason": reason,
            "replica": self._owner,
            **detail,
        }
        self._audit.record(
            AuditEntry("agent.alert", "fabric", tenant_id, self._tenants.mode_for(tenant_id), request=data)
        )
        event_id = uuid.uuid4().hex
        body = fabric_event(names.AGENT_ALERT_EVENT_TYPE, data, subject=f"{tenant_id}/{agent_id}", event_id=event_id)
        try:
            await self._js.publish(names.AGENT_ALERT_SUBJECT, body, headers={names.MSG_ID_HEADER: event_id})
        except Exception as exc:  # the audit entry still records it; NATS may be back for the next one
            log.warning("agent alert not published", extra={"agent_id": agent_id, "error": str(exc)})
