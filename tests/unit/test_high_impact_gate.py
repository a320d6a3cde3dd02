"""The built-in approval gate on high-impact actions, its setting, and decision input summaries. Pure."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agent_fabric.admission.decisions import MAX_INPUT_SUMMARY, input_summary
from agent_fabric.admission.policy_index import PolicyIndex, gate_high_impact
from agent_fabric.admission.policy_model import (
    HIGH_IMPACT_POLICY_ID,
    Action,
    Effect,
    Policy,
    PolicyContext,
    StoredPolicy,
)
from agent_fabric.settings import HIGH_IMPACT_ACTIONS, PolicySettings

CTX = PolicyContext(tenant_id="pod-7", agent_id="agent-zero", user="alice")
GATED = frozenset(HIGH_IMPACT_ACTIONS)


def index(*rules: dict[str, Any], scope: dict[str, str] | None = None) -> PolicyIndex:
    policy = Policy.model_validate({"scope": scope or {"tenant_id": "pod-7"}, "rules": list(rules)})
    return PolicyIndex([StoredPolicy("pod-7-gpu", 3, policy)])


def decide(idx: PolicyIndex, action: str, default: Effect = Effect.ALLOW, gated: frozenset[str] = GATED) -> Any:
    return gate_high_impact(idx.decide(Action.parse(action), CTX, default), gated)


@pytest.mark.parametrize("action", ["task:DEPLOY_GPU", "task:TERMINATE_GPU", "task:SCALE_GPU"])
def test_high_impact_tasks_need_approval_when_no_rule_matches(action: str) -> None:
    decision = decide(PolicyIndex([]), action)
    assert decision.effect == Effect.REQUIRE_APPROVAL and decision.policy_id == HIGH_IMPACT_POLICY_ID
    assert decision.approvers == () and decision.action == action
    assert "high-impact" in decision.reason and "built in" in decision.reason


@pytest.mark.parametrize("action", ["task:FIND_GPU", "task:OPTIMIZE_COST", "task:HEALTH_CHECK", "tool:DEPLOY_GPU"])
def test_other_actions_keep_the_default(action: str) -> None:
    decision = decide(PolicyIndex([]), action)
    assert decision.effect == Effect.ALLOW and decision.policy_id is None


def test_a_matching_rule_decides_even_an_allow() -> None:
    allow = index({"action_pattern": "task:DEPLOY_GPU", "effect": "allow"})
    assert decide(allow, "task:DEPLOY_GPU").effect == Effect.ALLOW
    assert decide(allow, "task:SCALE_GPU").effect == Effect.REQUIRE_APPROVAL  # the rule names deploy only
    glob = index({"action_pattern": "task:*", "effect": "allow"})
    assert decide(glob, "task:TERMINATE_GPU").policy_id == "pod-7-gpu"
    named = index({"action_pattern": "task:DEPLOY_*", "effect": "require_approval", "approvers": ["bob"]})
    assert decide(named, "task:DEPLOY_GPU").approvers == ("bob",)  # the POD's approvers, not the gate's
    # An allow rule with a condition that does not hold matches nothing: the gate applies.
    big = index({"action_pattern": "task:DEPLOY_GPU", "effect": "allow", "conditions": {"user": "carol"}})
    assert decide(big, "task:DEPLOY_GPU").policy_id == HIGH_IMPACT_POLICY_ID


def test_a_deny_default_stays_deny_and_an_empty_list_turns_the_gate_off() -> None:
    assert decide(PolicyIndex([]), "task:DEPLOY_GPU", default=Effect.DENY).effect == Effect.DENY
    assert decide(PolicyIndex([]), "task:DEPLOY_GPU", gated=frozenset()).effect == Effect.ALLOW


def test_setting_is_a_json_list_of_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PolicySettings().approval_required_actions == list(HIGH_IMPACT_ACTIONS)
    monkeypatch.setenv("AGENT_FABRIC_POLICY_APPROVAL_REQUIRED_ACTIONS", '["task:DEPLOY_GPU", "shell:rm *"]')
    assert PolicySettings().approval_required_actions == ["task:DEPLOY_GPU", "shell:rm *"]
    monkeypatch.setenv("AGENT_FABRIC_POLICY_APPROVAL_REQUIRED_ACTIONS", "[]")
    assert PolicySettings().approval_required_actions == []
    with pytest.raises(ValidationError, match="kind one of"):
        PolicySettings(approval_required_actions=["DEPLOY_GPU"])


def test_input_summary_keeps_small_inputs_and_previews_large_ones() -> None:
    small = {"gpu": "H100", "count": 2}
    assert input_summary(small) is small
    large = input_summary({"blob": "x" * 5000})
    assert large["truncated"] is True and large["bytes"] > 5000 and len(large["preview"]) == MAX_INPUT_SUMMARY
