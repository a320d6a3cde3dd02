"""The compiled policy set: rules indexed by scope and action kind, matched without a scan.

Precedence, the whole of it:
1. Only enabled policies of the context's scopes apply: its agent, its workspace, its tenant.
2. The most specific scope holding a matching rule decides: agent, then workspace, then tenant.
   (A tenant's rules are inherited by its workspaces and agents until they say otherwise.)
3. Within that scope the higher policy `priority` wins; at equal priority deny beats
   require_approval beats allow; then policy id, then rule order.
4. No rule matches anywhere: the default effect (AGENT_FABRIC_POLICY_DEFAULT_EFFECT, allow),
   except that an action listed in AGENT_FABRIC_POLICY_APPROVAL_REQUIRED_ACTIONS (by default
   task:DEPLOY_GPU, task:TERMINATE_GPU, task:SCALE_GPU) needs approval when that default is allow
   (policy id `builtin:high-impact`, see gate_high_impact). Any matching rule, an allow included,
   decides instead: a tenant lifts the gate with an explicit rule.

Speed: globs are compiled once when a policy set is loaded. Per scope and action kind, literal
patterns are a dict lookup; unconditional globs are one alternation regex whose alternatives are
in precedence order, so its first match is the winner; conditional globs are prefiltered by a
second alternation and only then checked one by one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import translate
from typing import Any

from agent_fabric.admission.policy_model import (
    HIGH_IMPACT_POLICY_ID,
    Action,
    Effect,
    PolicyContext,
    PolicyDecision,
    ScopeLevel,
    StoredPolicy,
)

Condition = Callable[[Action, PolicyContext], bool]
ScopeKey = tuple[ScopeLevel, str, str]
_GLOB = re.compile(r"[*?\[]")
_CONTEXT_FIELDS = frozenset({"tenant_id", "workspace_id", "agent_id", "user", "role"})


@dataclass(frozen=True, slots=True)
class CompiledRule:
    key: tuple[int, int, str, int]  # precedence: smaller wins
    policy_id: str
    version: int
    index: int
    level: ScopeLevel
    effect: Effect
    approvers: tuple[str, ...]
    approval_ttl_seconds: float | None
    conditions: tuple[Condition, ...]

    def holds(self, action: Action, ctx: PolicyContext) -> bool:
        return all(condition(action, ctx) for condition in self.conditions)

    def decision(self, action: str) -> PolicyDecision:
        return PolicyDecision(
            self.effect,
            action,
            self.policy_id,
            self.version,
            self.index,
            self.level,
            self.approvers,
            self.approval_ttl_seconds,
        )


class _Group:
    """The rules of one scope for one action kind ('*' for patterns that span kinds). Kind groups
    match the target alone (the common `kind:` prefix would only slow every alternative down)."""

    def __init__(self, rules: list[tuple[str, CompiledRule]]) -> None:
        rules.sort(key=lambda item: item[1].key)
        self.exact: dict[str, list[CompiledRule]] = {}
        plain: list[tuple[str, CompiledRule]] = []
        conditional: list[tuple[str, CompiledRule]] = []
        for text, rule in rules:
            if _GLOB.search(text) is None:
                self.exact.setdefault(text, []).append(rule)
            elif rule.conditions:
                conditional.append((text, rule))
            else:
                plain.append((text, rule))
        self.plain_rules = [rule for _, rule in plain]
        self.plain = _alternation([text for text, _ in plain])
        self.plain_gate = _gate([text for text, _ in plain])
        self.cond_rules = [(re.compile(translate(text)), rule) for text, rule in conditional]
        self.cond = _alternation([text for text, _ in conditional])
        self.cond_gate = _gate([text for text, _ in conditional])

    def best(self, subject: str, action: Action, ctx: PolicyContext) -> CompiledRule | None:
        best: CompiledRule | None = None
        for rule in self.exact.get(subject, ()):
            if rule.holds(action, ctx):
                best = rule
                break
        if self.plain is not None and subject.startswith(self.plain_gate):
            m = self.plain.match(subject)
            if m is not None and m.lastindex is not None:
                rule = self.plain_rules[m.lastindex - 1]
                if best is None or rule.key < best.key:
                    best = rule
        if self.cond is not None and subject.startswith(self.cond_gate):
            m = self.cond.match(subject)
            if m is not None and m.lastindex is not None:
                for pattern, rule in self.cond_rules[m.lastindex - 1 :]:
                    if best is not None and rule.key > best.key:
                        break
                    if pattern.match(subject) and rule.holds(action, ctx):
                        best = rule
                        break
        return best


def _gate(patterns: list[str]) -> tuple[str, ...]:
    """The patterns' literal prefixes: a subject starting with none of them matches none of them
    (str.startswith over a tuple is ten times cheaper than the alternation). The empty prefix of a
    pattern starting with a wildcard lets everything through."""
    return tuple({_GLOB.split(p, 1)[0] for p in patterns})


def _alternation(patterns: list[str]) -> re.Pattern[str] | None:
    # translate() yields non-capturing groups only, so group i+1 is alternative i.
    return re.compile("|".join(f"({translate(p)})" for p in patterns)) if patterns else None


class PolicyIndex:
    """An immutable snapshot; the engine swaps in a new one when policies change."""

    def __init__(self, policies: Iterable[StoredPolicy]) -> None:
        buckets: dict[ScopeKey, dict[str, list[tuple[str, CompiledRule]]]] = {}
        self.rule_count = 0
        for stored in policies:
            if not stored.policy.enabled:
                continue
            scope = stored.policy.scope
            key: ScopeKey = (scope.level, scope.tenant_id, scope.agent_id or scope.workspace_id or "")
            for i, rule in enumerate(stored.policy.rules):
                kind, sep, target = rule.action_pattern.partition(":")
                group, text = (kind, target) if sep and _GLOB.search(kind) is None else ("*", rule.action_pattern)
                compiled = CompiledRule(
                    key=(-stored.policy.priority, rule.effect.strength, stored.id, i),
                    policy_id=stored.id,
                    version=stored.version,
                    index=i,
                    level=scope.level,
                    effect=rule.effect,
                    approvers=tuple(rule.approvers),
                    approval_ttl_seconds=rule.approval_ttl_seconds,
                    conditions=tuple(compile_condition(k, v) for k, v in rule.conditions.items()),
                )
                buckets.setdefault(key, {}).setdefault(group, []).append((text, compiled))
                self.rule_count += 1
        self._scopes = {key: {kind: _Group(rules) for kind, rules in groups.items()} for key, groups in buckets.items()}

    def decide(self, action: Action, ctx: PolicyContext, default: Effect) -> PolicyDecision:
        name = action.name
        for key in _scope_keys(ctx):
            groups = self._scopes.get(key)
            if groups is None:
                continue
            best: CompiledRule | None = None
            kind_group = groups.get(action.kind)
            if kind_group is not None:
                best = kind_group.best(action.target, action, ctx)
            any_group = groups.get("*")
            if any_group is not None:
                rule = any_group.best(name, action, ctx)
                if rule is not None and (best is None or rule.key < best.key):
                    best = rule
            if best is not None:
                return best.decision(name)
        return PolicyDecision(default, name)


def gate_high_impact(decision: PolicyDecision, gated: frozenset[str]) -> PolicyDecision:
    """Precedence step 4: a high-impact action no rule matched needs approval rather than the
    default allow. A deny default stays deny (stricter), and a matched rule is never touched."""
    if decision.policy_id is None and decision.effect is Effect.ALLOW and decision.action in gated:
        return PolicyDecision(Effect.REQUIRE_APPROVAL, decision.action, HIGH_IMPACT_POLICY_ID)
    return decision


def _scope_keys(ctx: PolicyContext) -> list[ScopeKey]:
    keys: list[ScopeKey] = []
    if ctx.agent_id:
        keys.append((ScopeLevel.AGENT, ctx.tenant_id, ctx.agent_id))
    if ctx.workspace_id:
        keys.append((ScopeLevel.WORKSPACE, ctx.tenant_id, ctx.workspace_id))
    keys.append((ScopeLevel.TENANT, ctx.tenant_id, ""))
    return keys


# -- conditions: compiled once into small predicates --


def compile_condition(key: str, expected: Any) -> Condition:
    get = _getter(key)
    test = _test(expected)
    return lambda action, ctx: test(get(action, ctx))


def _getter(key: str) -> Callable[[Action, PolicyContext], Any]:
    if key.startswith("input."):
        path = key[len("input.") :].split(".")
        return lambda action, _ctx: _walk(action.attributes, path)
    if key in _CONTEXT_FIELDS:
        return lambda _action, ctx: getattr(ctx, key)
    return lambda _action, ctx: ctx.attributes.get(key)


def _walk(data: Mapping[str, Any], path: list[str]) -> Any:
    value: Any = data
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _test(expected: Any) -> Callable[[Any], bool]:
    if isinstance(expected, dict):
        tests = [_comparison(op, value) for op, value in expected.items()]
        return lambda actual: all(t(actual) for t in tests)
    if isinstance(expected, list):
        return lambda actual: actual is not None and actual in expected
    return lambda actual: actual is not None and actual == expected


def _comparison(op: str, value: Any) -> Callable[[Any], bool]:
    if op == "in":
        return lambda actual: actual is not None and actual in value
    if op == "not_in":
        return lambda actual: actual not in value
    if op == "ne":
        return lambda actual: actual != value
    if op == "glob":
        rx = re.compile(translate(value))
        return lambda actual: isinstance(actual, str) and rx.match(actual) is not None
    compare: Callable[[float], bool] = {
        "gt": lambda a: a > value,
        "gte": lambda a: a >= value,
        "lt": lambda a: a < value,
        "lte": lambda a: a <= value,
    }[op]
    return lambda actual: isinstance(actual, int | float) and not isinstance(actual, bool) and compare(actual)
