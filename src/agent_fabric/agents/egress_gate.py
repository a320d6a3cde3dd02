"""What may leave an agent's sandbox: its `network_egress` list, then the policy engine's `url:`
rules for the agent, every decision audited (`agent.egress`). Used by egress_proxy.EgressProxy."""

from __future__ import annotations

from agent_fabric.admission.policy import PolicyEngine
from agent_fabric.admission.policy_model import Action, Effect, PolicyContext
from agent_fabric.agents.egress_proxy import Decide, host_allowed
from agent_fabric.audit.entries import AuditEntry
from agent_fabric.audit.writer import AuditWriter
from agent_fabric.tenants import TenantRegistry


class EgressGate:
    def __init__(self, policies: PolicyEngine, audit: AuditWriter, tenants: TenantRegistry) -> None:
        self._policies = policies
        self._audit = audit
        self._tenants = tenants

    def for_agent(self, agent_id: str, tenant_id: str, allowlist: list[str]) -> Decide:
        actor = f"agent:{agent_id}"
        context = PolicyContext(
            tenant_id=tenant_id, agent_id=agent_id, user=actor, role="agent", attributes={"runtime": "process"}
        )

        async def decide(scheme: str, host: str, port: int, url: str) -> tuple[bool, str]:
            if not host_allowed(allowlist, host, port):
                allowed, why = False, f"{host}:{port} is not in the agent's network_egress {allowlist}"
            else:
                decision = self._policies.decide(Action("url", url), context, actor=actor, door="egress")
                allowed, why = decision.effect == Effect.ALLOW, decision.reason
            self._audit.record(
                AuditEntry(
                    "agent.egress",
                    actor,
                    tenant_id,
                    self._tenants.mode_for(tenant_id),
                    request={"agent_id": agent_id, "url": url, "host": host, "port": port},
                    response={"allowed": allowed, "reason": why},
                )
            )
            return allowed, why

        return decide
