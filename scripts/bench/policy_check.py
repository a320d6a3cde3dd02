"""Policy check latency: 1,000 rules across three scopes (tenant, workspace, agent) of one tenant.

    python scripts/bench/policy_check.py [--rules 1000] [--checks 200000]

Builds a realistic mix (literal task types, globs over task types, file paths, URLs and shell
commands, rules with conditions, several policies per scope with different priorities), then
times single decisions with perf_counter_ns over a mix of actions that match at the agent,
workspace or tenant scope, or nowhere (the worst case: all three scopes searched). Two numbers:
the matcher alone (PolicyIndex.decide) and the engine's full decide (matcher + metric + audit
entry handed to the batched writer), which is what both doors pay per task. Goal p99 < 50 us.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from agent_fabric.admission.approvals import ApprovalDesk  # noqa: E402
from agent_fabric.admission.policy import PolicyEngine  # noqa: E402
from agent_fabric.admission.policy_index import PolicyIndex  # noqa: E402
from agent_fabric.admission.policy_model import Action, Effect, Policy, PolicyContext, StoredPolicy  # noqa: E402
from agent_fabric.audit.writer import AuditWriter  # noqa: E402
from agent_fabric.settings import AuditSettings, Settings  # noqa: E402
from agent_fabric.storage.documents import DocumentStore  # noqa: E402
from agent_fabric.storage.engine import create_engine  # noqa: E402
from agent_fabric.telemetry.metrics import FabricMetrics  # noqa: E402
from agent_fabric.tenants import TenantRegistry  # noqa: E402

TENANT = "pod-7"
SCOPES = ({}, {"workspace_id": "ws-1"}, {"agent_id": "agent-1"})
EFFECTS = ("allow", "deny", "require_approval")


def make_rule(rng: random.Random, i: int) -> dict[str, Any]:
    kind = rng.random()
    effect = EFFECTS[i % 3]
    if kind < 0.35:
        rule: dict[str, Any] = {"action_pattern": f"task:TYPE_{i}", "effect": effect}
    elif kind < 0.55:
        rule = {"action_pattern": f"task:GROUP_{i}_*", "effect": effect}
    elif kind < 0.65:
        rule = {"action_pattern": f"file:/data/{i}/*", "effect": effect}
    elif kind < 0.75:
        rule = {"action_pattern": f"url:https://host{i}.example.com/*", "effect": effect}
    elif kind < 0.85:
        rule = {"action_pattern": f"shell:cmd{i} *", "effect": effect}
    else:
        rule = {"action_pattern": f"task:COND_{i}*", "effect": effect, "conditions": {"input.n": {"gt": i % 7}}}
    if effect != "require_approval":
        return rule
    return {**rule, "approvers": ["bob"]}


def build_policies(total: int, seed: int = 7) -> list[StoredPolicy]:
    rng = random.Random(seed)
    policies = []
    per_scope = [total * 4 // 10, total * 3 // 10, total - total * 4 // 10 - total * 3 // 10]
    n = 0
    for scope, count in zip(SCOPES, per_scope, strict=True):
        for p in range(0, count, 50):
            rules = [make_rule(rng, n + k) for k in range(min(50, count - p))]
            n += len(rules)
            policy = Policy.model_validate(
                {"scope": {"tenant_id": TENANT, **scope}, "rules": rules, "priority": rng.randint(0, 5)}
            )
            policies.append(StoredPolicy(f"p{len(policies)}", 1, policy))
    return policies


def actions(total: int, rng: random.Random) -> list[Action]:
    out = []
    for _ in range(4096):
        i = rng.randrange(total)
        pick = rng.random()
        if pick < 0.3:
            out.append(Action("task", f"TYPE_{i}", {"n": 3}))
        elif pick < 0.5:
            out.append(Action("task", f"GROUP_{i}_X", {}))
        elif pick < 0.6:
            out.append(Action("task", f"COND_{i}5", {"n": rng.randrange(10)}))
        elif pick < 0.7:
            out.append(Action("file", f"/data/{i}/a.txt"))
        elif pick < 0.8:
            out.append(Action("url", f"https://host{i}.example.com/x"))
        elif pick < 0.9:
            out.append(Action("shell", f"cmd{i} --force"))
        else:
            out.append(Action("task", f"NOTHING_{i}"))  # matches nowhere: every scope searched
    return out


def summarize(name: str, samples: list[int]) -> None:
    samples.sort()
    us = [s / 1000 for s in samples]
    p = lambda q: us[min(len(us) - 1, int(q * len(us)))]  # noqa: E731
    print(
        f"{name:<34} n={len(us):>7}  mean {statistics.fmean(us):6.2f} us  p50 {p(0.5):6.2f}  "
        f"p99 {p(0.99):6.2f}  p99.9 {p(0.999):7.2f}  max {us[-1]:8.1f}"
    )


def time_calls(fn: Any, items: list[Action], ctx: PolicyContext, checks: int, between: Any = None) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    for k in range(checks):
        action = items[k % len(items)]
        t0 = clock()
        fn(action, ctx)
        samples.append(clock() - t0)
        if between is not None and k % 100 == 99:
            between()  # untimed: what the audit writer's flush does every 100 ms
    return samples


async def engine_for(policies: list[StoredPolicy], tmp: Path) -> PolicyEngine:
    settings = Settings(state_dir=tmp)
    engine = create_engine(settings)
    metrics = FabricMetrics()
    docs = DocumentStore(engine)
    tenants = TenantRegistry(docs, "SANDBOX")
    # The writer only buffers here (it is not started): record() is what a decision pays.
    audit = AuditWriter(engine, AuditSettings(buffer_max=10_000_000), tmp / "spool", metrics)
    desk = ApprovalDesk(engine, settings.approval, tenants, metrics)

    async def announce(_topic: str) -> None:
        return None

    policies_engine = PolicyEngine(engine, docs, settings.policy, tenants, audit, metrics, desk, announce)
    policies_engine._index = PolicyIndex(policies)
    return policies_engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--checks", type=int, default=200_000)
    args = parser.parse_args()
    policies = build_policies(args.rules)
    t0 = time.perf_counter()
    index = PolicyIndex(policies)
    compile_ms = (time.perf_counter() - t0) * 1000
    print(f"{index.rule_count} rules in {len(policies)} policies across 3 scopes; compiled in {compile_ms:.1f} ms")
    rng = random.Random(11)
    items = actions(args.rules, rng)
    ctx = PolicyContext(tenant_id=TENANT, workspace_id="ws-1", agent_id="agent-1", user="alice", role="agent")
    effects = {e: 0 for e in Effect}
    for a in items:
        effects[index.decide(a, ctx, Effect.ALLOW).effect] += 1
    print("decision mix:", {e.value: n for e, n in effects.items()})
    gc.collect()
    gc.disable()
    try:
        time_calls(lambda a, c: index.decide(a, c, Effect.ALLOW), items, ctx, 20_000)  # warm up
        matcher = lambda a, c: index.decide(a, c, Effect.ALLOW)  # noqa: E731
        summarize("matcher (PolicyIndex.decide)", time_calls(matcher, items, ctx, args.checks))
        with tempfile.TemporaryDirectory() as tmp:
            engine = asyncio.run(engine_for(policies, Path(tmp)))
            decide = lambda a, c: engine.decide(a, c, actor="alice", door="nats")  # noqa: E731
            time_calls(decide, items, ctx, 20_000)
            summarize("engine (+ metric + audit entry)", time_calls(decide, items, ctx, args.checks))
    finally:
        gc.enable()
    # As in the service: the garbage collector on, and the audit writer taking its batches away
    # (here every 100 decisions, untimed; the service flushes every 100 ms).
    with tempfile.TemporaryDirectory() as tmp:
        engine = asyncio.run(engine_for(policies, Path(tmp)))
        decide = lambda a, c: engine.decide(a, c, actor="alice", door="nats")  # noqa: E731
        pending = engine._audit._pending
        summarize("engine, gc on, audit drained", time_calls(decide, items, ctx, args.checks, pending.clear))


if __name__ == "__main__":
    main()
