"""Rule matching, conditions, precedence across scopes, and policy validation. Pure."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agent_fabric.admission.policy_index import PolicyIndex
from agent_fabric.admission.policy_model import Action, Effect, Policy, PolicyContext, ScopeLevel, StoredPolicy

CTX = PolicyContext(tenant_id="pod-7", workspace_id="ws-1", agent_id="builtin", user="alice", role="agent")


def stored(pid: str, rules: list[dict[str, Any]], priority: int = 0, **scope: str) -> StoredPolicy:
    policy = Policy.model_validate({"scope": {"tenant_id": "pod-7", **scope}, "rules": rules, "priority": priority})
    return StoredPolicy(pid, 1, policy)


def rule(pattern: str, effect: str, **extra: Any) -> dict[str, Any]:
    return {"action_pattern": pattern, "effect": effect, **extra}


def decide(policies: list[StoredPolicy], action: str, ctx: PolicyContext = CTX, **attrs: Any) -> Effect:
    return PolicyIndex(policies).decide(Action.parse(action, attrs), ctx, Effect.ALLOW).effect


@pytest.mark.parametrize(
    "pattern, action, matches",
    [
        ("task:DEPLOY_GPU", "task:DEPLOY_GPU", True),
        ("task:DEPLOY_GPU", "task:DEPLOY_GPU_X", False),
        ("task:DEPLOY_*", "task:DEPLOY_GPU", True),
        ("task:*_GPU", "task:FIND_GPU", True),
        ("task:?IND_GPU", "task:FIND_GPU", True),
        ("task:[FD]*", "task:DEPLOY_GPU", True),
        ("task:[!FD]*", "task:DEPLOY_GPU", False),
        ("file:/workspace/*", "file:/workspace/a/b.txt", True),
        ("file:/workspace/*", "file:/etc/passwd", False),
        ("url:https://*.example.com/*", "url:https://api.example.com/v1", True),
        ("url:https://*.example.com/*", "url:http://api.example.com/v1", False),
        ("shell:rm -rf *", "shell:rm -rf /", True),
        ("shell:rm -rf *", "shell:ls -l", False),
        ("*", "tool:web_search", True),
        ("*:secret*", "file:secret.txt", True),
        ("task:deploy_gpu", "task:DEPLOY_GPU", False),  # case-sensitive
    ],
)
def test_glob_matching(pattern: str, action: str, matches: bool) -> None:
    expected = Effect.DENY if matches else Effect.ALLOW
    assert decide([stored("p", [rule(pattern, "deny")])], action) == expected


def test_kinds_do_not_leak_into_each_other() -> None:
    policies = [stored("p", [rule("file:/etc/*", "deny")])]
    assert decide(policies, "file:/etc/shadow") == Effect.DENY
    assert decide(policies, "url:/etc/shadow") == Effect.ALLOW


def test_within_a_scope_deny_beats_approval_beats_allow() -> None:
    rules = [rule("task:*", "allow"), rule("task:DEPLOY_*", "require_approval"), rule("task:DEPLOY_GPU", "deny")]
    policies = [stored("p", rules)]
    assert decide(policies, "task:DEPLOY_GPU") == Effect.DENY
    assert decide(policies, "task:DEPLOY_CPU") == Effect.REQUIRE_APPROVAL
    assert decide(policies, "task:FIND_GPU") == Effect.ALLOW


def test_higher_priority_policy_wins_within_a_scope() -> None:
    deny_all = stored("deny-all", [rule("shell:*", "deny")], priority=0)
    allow_ls = stored("allow-ls", [rule("shell:ls *", "allow")], priority=10)
    assert decide([deny_all, allow_ls], "shell:ls -l") == Effect.ALLOW
    assert decide([deny_all, allow_ls], "shell:rm -rf /") == Effect.DENY


def test_most_specific_scope_wins_and_tenant_rules_are_inherited() -> None:
    tenant = stored("t", [rule("task:*", "deny"), rule("tool:*", "require_approval")])
    workspace = stored("w", [rule("task:FIND_*", "allow")], workspace_id="ws-1")
    agent = stored("a", [rule("task:FIND_CHEAP", "deny")], agent_id="builtin")
    policies = [tenant, workspace, agent]
    assert decide(policies, "task:FIND_GPU") == Effect.ALLOW  # workspace over tenant
    assert decide(policies, "task:FIND_CHEAP") == Effect.DENY  # agent over workspace
    assert decide(policies, "task:DEPLOY_GPU") == Effect.DENY  # inherited from the tenant
    assert decide(policies, "tool:web_search") == Effect.REQUIRE_APPROVAL
    other_ws = PolicyContext(tenant_id="pod-7", workspace_id="ws-2")
    assert decide(policies, "task:FIND_GPU", other_ws) == Effect.DENY
    other_tenant = PolicyContext(tenant_id="pod-8", workspace_id="ws-1", agent_id="builtin")
    assert decide(policies, "task:DEPLOY_GPU", other_tenant) == Effect.ALLOW


def test_conditions_on_context_and_input() -> None:
    rules = [
        rule("task:DEPLOY_GPU", "require_approval", conditions={"input.count": {"gt": 4}}),
        rule("task:DEPLOY_GPU", "deny", conditions={"input.gpu": ["H200", "B200"]}),
        rule("task:*", "deny", conditions={"user": {"not_in": ["alice", "bob"]}}),
        rule("tool:*", "deny", conditions={"role": "viewer"}),
        rule("url:*", "deny", conditions={"input.host": {"glob": "*.internal"}}),
    ]
    policies = [stored("p", rules)]
    assert decide(policies, "task:DEPLOY_GPU", gpu="H100", count=2) == Effect.ALLOW
    assert decide(policies, "task:DEPLOY_GPU", gpu="H100", count=8) == Effect.REQUIRE_APPROVAL
    assert decide(policies, "task:DEPLOY_GPU", gpu="B200", count=1) == Effect.DENY
    assert decide(policies, "task:DEPLOY_GPU", gpu="H100", count="8") == Effect.ALLOW  # not a number
    mallory = PolicyContext(tenant_id="pod-7", user="mallory")
    assert decide(policies, "task:FIND_GPU", mallory) == Effect.DENY
    assert decide(policies, "tool:x", PolicyContext(tenant_id="pod-7", role="viewer")) == Effect.DENY
    assert decide(policies, "url:http://db.internal/x", host="db.internal") == Effect.DENY
    assert decide(policies, "url:http://db.example/x", host="db.example") == Effect.ALLOW


def test_conditional_rules_are_scanned_in_precedence_order() -> None:
    rules = [rule(f"task:T{i}*", "deny", conditions={"input.n": i}) for i in range(50)]
    rules.append(rule("task:T4*", "require_approval", conditions={"input.n": {"gte": 0}}))
    policies = [stored("p", rules)]
    assert decide(policies, "task:T42", n=42) == Effect.DENY
    assert decide(policies, "task:T42", n=7) == Effect.REQUIRE_APPROVAL
    assert decide(policies, "task:T1", n=7) == Effect.ALLOW


def test_default_and_disabled_policies() -> None:
    off = Policy.model_validate({"scope": {"tenant_id": "pod-7"}, "rules": [rule("*", "deny")], "enabled": False})
    index = PolicyIndex([StoredPolicy("off", 1, off)])
    assert index.decide(Action.parse("task:X"), CTX, Effect.ALLOW).effect == Effect.ALLOW
    assert index.decide(Action.parse("task:X"), CTX, Effect.DENY).effect == Effect.DENY


def test_decision_names_its_rule() -> None:
    policies = [stored("gpu", [rule("task:A", "allow"), rule("task:DEPLOY_*", "require_approval", approvers=["bob"])])]
    decision = PolicyIndex(policies).decide(Action.parse("task:DEPLOY_GPU"), CTX, Effect.ALLOW)
    assert (decision.policy_id, decision.rule_index, decision.scope) == ("gpu", 1, ScopeLevel.TENANT)
    assert decision.approvers == ("bob",) and "policy 'gpu'" in decision.reason


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"scope": {"tenant_id": "t"}, "rules": [rule("deploy", "deny")]}, "action_pattern must start"),
        ({"scope": {"tenant_id": "t"}, "rules": [rule("rocket:x", "deny")]}, "action_pattern must start"),
        ({"scope": {"tenant_id": "t"}, "rules": [rule("task:x", "maybe")]}, "effect"),
        (
            {"scope": {"tenant_id": "t"}, "rules": [rule("task:x", "deny", conditions={"color": 1})]},
            "unknown condition",
        ),
        ({"scope": {"tenant_id": "t"}, "rules": [rule("task:x", "deny", conditions={"user": {"gt": "a"}})]}, "number"),
        ({"scope": {"tenant_id": "t"}, "rules": [rule("task:x", "deny", conditions={"user": {"near": 1}})]}, "compar"),
        ({"scope": {"tenant_id": "t"}, "rules": [rule("task:x", "allow", approvers=["bob"])]}, "require_approval"),
        ({"scope": {"tenant_id": "t", "workspace_id": "w", "agent_id": "a"}, "rules": []}, "not both"),
        ({"scope": {"tenant_id": "bad tenant"}, "rules": []}, "tenant_id"),
        ({"scope": {"tenant_id": "t"}, "rules": [], "colour": "red"}, "colour"),
    ],
)
def test_invalid_policies_are_refused_with_the_reason(doc: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Policy.model_validate(doc)
    assert fragment in str(refused.value)


def test_action_parse_refuses_unknown_kinds() -> None:
    assert Action.parse("shell:ls -l").target == "ls -l"
    for bad in ("rocket:x", "task:", "no-colon"):
        with pytest.raises(ValueError):
            Action.parse(bad)
