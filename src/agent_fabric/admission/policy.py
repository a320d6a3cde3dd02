"""The policy engine (FR-POL-1..6): decisions from memory, updates stored as versions and broadcast.

`decide` is synchronous and allocation-light: it reads the current compiled PolicyIndex (an
immutable snapshot swapped whole on reload), counts the decision and hands an audit entry to the
batched writer. Updates are validated, stored as a new version with their audit entry in one
transaction, applied here at once and announced on agent.control.policies, which makes every
other replica reload within milliseconds (and a periodic reload covers a missed announcement).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.admission.approvals import ApprovalDesk, ApprovalResult
from agent_fabric.admission.policy_index import PolicyIndex, gate_high_impact
from agent_fabric.admission.policy_model import Action, Effect, Policy, PolicyContext, PolicyDecision, StoredPolicy
from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.audit.writer import AuditWriter
from agent_fabric.errors import InvalidDocument, NotFound, field_errors
from agent_fabric.settings import PolicySettings
from agent_fabric.storage.documents import POLICY, DocumentStore, StoredDoc
from agent_fabric.telemetry.metrics import FabricMetrics
from agent_fabric.tenants import TenantRegistry

Announce = Callable[[str], Awaitable[None]]


def validate_policy(body: Any) -> Policy:
    """The policy, or InvalidDocument(invalid_policy) naming every problem."""
    try:
        policy = Policy.model_validate(body)
    except ValidationError as exc:
        detail, errors = field_errors(exc.errors(), root="policy")
        raise InvalidDocument(f"policy refused: {detail}", code="invalid_policy", errors=errors) from None
    PolicyIndex([StoredPolicy("candidate", 0, policy)])  # every pattern compiles
    return policy


class PolicyEngine:
    def __init__(
        self,
        engine: AsyncEngine,
        docs: DocumentStore,
        cfg: PolicySettings,
        tenants: TenantRegistry,
        audit: AuditWriter,
        metrics: FabricMetrics,
        desk: ApprovalDesk,
        announce: Announce,
    ) -> None:
        self._engine = engine
        self._docs = docs
        self._default = Effect(cfg.default_effect)
        self._audit_decisions = cfg.audit_decisions
        self._high_impact = frozenset(cfg.approval_required_actions)
        self._tenants = tenants
        self._audit = audit
        self._decisions = {effect: metrics.policy_decisions.labels(effect.value) for effect in Effect}
        self._desk = desk
        self._announce = announce
        self._index = PolicyIndex([])
        self._signature: tuple[tuple[str, int], ...] | None = None
        self._reloading = asyncio.Lock()

    @property
    def rule_count(self) -> int:
        return self._index.rule_count

    def decide(self, action: Action, ctx: PolicyContext, *, actor: str, door: str = "api") -> PolicyDecision:
        decision = gate_high_impact(self._index.decide(action, ctx, self._default), self._high_impact)
        self._decisions[decision.effect].inc()
        if self._audit_decisions:
            self._audit.record(
                AuditEntry(
                    "policy.decision",
                    actor,
                    ctx.tenant_id,
                    self._tenants.mode_for(ctx.tenant_id),
                    # Objects as they are; the writer turns them into JSON when it flushes.
                    request={"action": decision.action, "context": ctx, "door": door},
                    response=decision,
                )
            )
        return decision

    # -- the seed's interface --

    async def check(self, action: Action, context: PolicyContext) -> PolicyDecision:
        return self.decide(action, context, actor=context.user or "unknown")

    async def require_approval(
        self,
        action: Action,
        context: PolicyContext,
        approvers: list[str],
        *,
        ttl_seconds: float | None = None,
        wait_seconds: float | None = None,
    ) -> ApprovalResult:
        """Ask `approvers` and wait for their decision (or `wait_seconds`, or the approval's expiry)."""
        record = await self._desk.request(action, context, approvers, ttl_seconds, context.user or "unknown")
        limit = (record.expires_at - record.requested_at).total_seconds()
        return await self._desk.wait(record.id, min(wait_seconds or limit, limit) + 2.0)

    async def update_policy(
        self, policy_id: str, policy: Policy, *, actor: str = "system", expected_version: int | None = None
    ) -> StoredDoc:
        """Store `policy` as the next version of `policy_id`, apply it here, announce it everywhere."""
        body = policy.model_dump(mode="json")
        async with self._engine.begin() as conn:
            doc = await self._docs.put(
                conn,
                kind=POLICY,
                doc_id=policy_id,
                tenant_id=policy.scope.tenant_id,
                body=body,
                actor=actor,
                expected_version=expected_version,
            )
            await append(
                conn,
                AuditEntry(
                    "policy.updated",
                    actor,
                    policy.scope.tenant_id,
                    self._tenants.mode_for(policy.scope.tenant_id),
                    request={"policy_id": policy_id, "policy": body},
                    response={"version": doc.version},
                ),
            )
        await self._applied()
        return doc

    async def delete_policy(self, policy_id: str, *, actor: str, expected_version: int | None = None) -> StoredDoc:
        current = await self._docs.get(POLICY, policy_id)
        if current is None or current.deleted:
            raise NotFound(f"no policy {policy_id!r}")
        async with self._engine.begin() as conn:
            doc = await self._docs.put(
                conn,
                kind=POLICY,
                doc_id=policy_id,
                tenant_id=current.tenant_id,
                body=current.body,
                actor=actor,
                deleted=True,
                expected_version=expected_version,
            )
            await append(
                conn,
                AuditEntry(
                    "policy.deleted",
                    actor,
                    current.tenant_id,
                    self._tenants.mode_for(current.tenant_id),
                    request={"policy_id": policy_id},
                    response={"version": doc.version},
                ),
            )
        await self._applied()
        return doc

    async def _applied(self) -> None:
        await self.reload()
        await self._announce("policies")

    async def reload(self) -> None:
        """Compile the stored policies and swap them in whole (readers never see half a set).
        Unchanged versions skip the compile; a compile runs in a thread, so the event loop keeps
        serving (1,000 rules take ~80 ms)."""
        async with self._reloading:  # one at a time, so an older read never replaces a newer set
            docs = await self._docs.current(POLICY)
            signature = tuple((d.doc_id, d.version) for d in docs)
            if signature == self._signature:
                return
            stored = [StoredPolicy(d.doc_id, d.version, Policy.model_validate(d.body)) for d in docs]
            self._index = await asyncio.to_thread(PolicyIndex, stored)
            self._signature = signature
