"""Policies as documents: actions, contexts, rules, decisions. Pure data and validation, no I/O.

An action is `<kind>:<target>`: `task:DEPLOY_GPU` (a task submission), `tool:web_search`,
`file:/etc/passwd`, `url:https://example.com/x`, `shell:rm -rf /tmp/x`, `model:gpt-4o` (a call
through the LLM gateway). A rule's
`action_pattern` is a glob over that string (`*` any run of characters, `?` one, `[..]` a set).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_fabric.tasks import TENANT_ID_PATTERN

ACTION_KINDS = ("task", "tool", "file", "url", "shell", "model")
POLICY_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
SCOPE_ID_PATTERN = r"^[A-Za-z0-9._:/@-]{1,160}$"
MAX_RULES_PER_POLICY = 1000
# The policy id of the built-in approval gate on high-impact actions (policy_index.gate_high_impact).
HIGH_IMPACT_POLICY_ID = "builtin:high-impact"
# Context names a condition may test besides `input.<field>` (the action's attributes).
CONTEXT_KEYS = frozenset(
    {"tenant_id", "workspace_id", "agent_id", "user", "role", "runtime", "profile", "priority", "mode"}
)
COMPARISONS = frozenset({"in", "not_in", "ne", "gt", "gte", "lt", "lte", "glob"})
_GLOB_CHARS = re.compile(r"[*?\[]")


class Effect(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"

    @property
    def strength(self) -> int:
        """Within one scope and priority: deny (0) beats require_approval (1) beats allow (2)."""
        return _STRENGTH[self]


_STRENGTH = {Effect.DENY: 0, Effect.REQUIRE_APPROVAL: 1, Effect.ALLOW: 2}


class ScopeLevel(enum.StrEnum):
    TENANT = "tenant"
    WORKSPACE = "workspace"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class Action:
    kind: str
    target: str
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.target}"

    @classmethod
    def parse(cls, text: str, attributes: Mapping[str, Any] | None = None) -> Action:
        kind, sep, target = text.partition(":")
        if not sep or kind not in ACTION_KINDS or not target:
            raise ValueError(f"an action is <kind>:<target> with kind one of {', '.join(ACTION_KINDS)}; got {text!r}")
        return cls(kind, target, attributes or {})


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """Who acts, where. Policies of the tenant, the workspace and the agent apply."""

    tenant_id: str
    workspace_id: str | None = None
    agent_id: str | None = None
    user: str | None = None
    role: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)


class PolicyScope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str = Field(..., pattern=TENANT_ID_PATTERN)
    workspace_id: str | None = Field(None, pattern=SCOPE_ID_PATTERN)
    agent_id: str | None = Field(None, pattern=SCOPE_ID_PATTERN)

    @model_validator(mode="after")
    def _one_level(self) -> PolicyScope:
        if self.workspace_id is not None and self.agent_id is not None:
            raise ValueError("a policy scope names a workspace or an agent, not both")
        return self

    @property
    def level(self) -> ScopeLevel:
        if self.agent_id is not None:
            return ScopeLevel.AGENT
        return ScopeLevel.WORKSPACE if self.workspace_id is not None else ScopeLevel.TENANT


class PolicyRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action_pattern: str = Field(..., min_length=1, max_length=512)
    effect: Effect
    conditions: dict[str, Any] = Field(default_factory=dict)
    approvers: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="require_approval: who may decide (token subjects, or role:<role>); empty: any holder "
        "of approvals:decide in the tenant.",
    )
    approval_ttl_seconds: float | None = Field(None, gt=0, description="require_approval: how long it may wait.")

    @field_validator("action_pattern")
    @classmethod
    def _known_kind(cls, pattern: str) -> str:
        kind, sep, _ = pattern.partition(":")
        if _GLOB_CHARS.search(kind) is None and (not sep or kind not in ACTION_KINDS):
            raise ValueError(
                f"action_pattern must start with one of {', '.join(k + ':' for k in ACTION_KINDS)} "
                "or be a glob over every action (such as '*')"
            )
        return pattern

    @field_validator("conditions")
    @classmethod
    def _valid_conditions(cls, conditions: dict[str, Any]) -> dict[str, Any]:
        for key, expected in conditions.items():
            if key not in CONTEXT_KEYS and not (key.startswith("input.") and len(key) > len("input.")):
                raise ValueError(f"unknown condition {key!r}: use {', '.join(sorted(CONTEXT_KEYS))} or input.<field>")
            _check_expected(key, expected)
        return conditions

    @model_validator(mode="after")
    def _approval_fields(self) -> PolicyRule:
        if self.effect != Effect.REQUIRE_APPROVAL and (self.approvers or self.approval_ttl_seconds is not None):
            raise ValueError("approvers and approval_ttl_seconds belong to require_approval rules")
        return self


def _check_expected(key: str, expected: Any) -> None:
    if isinstance(expected, dict):
        unknown = set(expected) - COMPARISONS
        if unknown or not expected:
            raise ValueError(f"condition {key!r}: comparisons are {', '.join(sorted(COMPARISONS))}")
        for op, value in expected.items():
            if op in ("in", "not_in") and not isinstance(value, list):
                raise ValueError(f"condition {key!r}: {op} takes a list")
            if op in ("gt", "gte", "lt", "lte") and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"condition {key!r}: {op} takes a number")
            if op == "glob" and not isinstance(value, str):
                raise ValueError(f"condition {key!r}: glob takes a string")
    elif not isinstance(expected, str | int | float | bool | list) or expected is None:
        raise ValueError(f"condition {key!r}: expect a value, a list of values or a comparison object")


class Policy(BaseModel):
    """A named set of rules for one scope. `priority` orders policies within a scope (higher first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: PolicyScope
    rules: list[PolicyRule] = Field(..., max_length=MAX_RULES_PER_POLICY)
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)
    description: str | None = Field(None, max_length=2000)
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    id: str
    version: int
    policy: Policy


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    effect: Effect
    action: str
    policy_id: str | None = None
    policy_version: int | None = None
    rule_index: int | None = None
    scope: ScopeLevel | None = None
    approvers: tuple[str, ...] = ()
    approval_ttl_seconds: float | None = None

    @property
    def reason(self) -> str:
        if self.policy_id is None:
            return f"no rule matches {self.action!r}: default {self.effect.value}"
        if self.policy_id == HIGH_IMPACT_POLICY_ID:
            return f"no rule matches {self.action!r}, a high-impact action: {self.effect.value} (built in)"
        return (
            f"{self.effect.value} by rule {self.rule_index} of policy {self.policy_id!r} "
            f"(v{self.policy_version}, {self.scope.value if self.scope else '?'} scope) for {self.action!r}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect.value,
            "action": self.action,
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "rule_index": self.rule_index,
            "scope": self.scope.value if self.scope else None,
            "approvers": list(self.approvers),
            "reason": self.reason,
        }
