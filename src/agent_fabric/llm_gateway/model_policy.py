"""The `model:<name>` policy action: tenants allow or deny models, or make some need approval."""

from __future__ import annotations

from agent_fabric.admission.policy import PolicyEngine
from agent_fabric.admission.policy_model import Action, Effect, PolicyContext
from agent_fabric.llm_gateway.keys import KeyGrant
from agent_fabric.llm_gateway.openai_errors import GatewayError, policy_denied


class ModelPolicy:
    def __init__(self, policies: PolicyEngine, approval_wait_seconds: float) -> None:
        self._policies = policies
        self._wait = approval_wait_seconds

    async def check(self, grant: KeyGrant, model: str, mode: str) -> None:
        """Return when the key's tenant may call `model`; raise a 403 GatewayError otherwise."""
        action = Action("model", model, {"key": grant.kind})
        context = PolicyContext(
            tenant_id=grant.tenant_id,
            agent_id=grant.agent_label,
            user=grant.user,
            attributes={"mode": mode, "runtime": None},
        )
        decision = self._policies.decide(action, context, actor=grant.actor, door="llm")
        if decision.effect == Effect.ALLOW:
            return
        if decision.effect == Effect.DENY:
            raise policy_denied(f"model {model!r} is denied for this caller: {decision.reason}")
        if self._wait > 0:
            result = await self._policies.require_approval(
                action,
                context,
                list(decision.approvers),
                ttl_seconds=decision.approval_ttl_seconds,
                wait_seconds=self._wait,
            )
            if result.approved:
                return
            raise _needs_approval(model, f"approval {result.approval_id} is {result.status}")
        raise _needs_approval(model, decision.reason)


def _needs_approval(model: str, why: str) -> GatewayError:
    return policy_denied(f"model {model!r} needs approval: {why}", code="model_requires_approval")
