"""Admission overhead per task (policy + budget) at a steady 1,000 tasks/s, on Postgres.

    python scripts/bench/admission.py [--rate 1000] [--seconds 5]

Opens a real fabric (a current nats-server on a free port, a throwaway Postgres database), stores
1,000 policy rules across the tenant, workspace and agent scopes, and admits builtin tasks at a
fixed arrival rate through the same Admission object both doors use: the in-memory checks and
policy decision, then the budget reservation. Two runs:
1. no budget with limits applies: the decision only (plus its audit entry, batched);
2. the tenant is LIVE with a cost limit: every task also reserves its estimate (one locked
   UPDATE per batch on the budget batcher, plus its ledger row).
Prints per-task latency (arrival to admitted) and process CPU per task, which includes the
background audit writes; a first run without admission measures the harness itself (arrival
scheduling, event objects) and the fabric idling, to subtract. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from scripts.bench.policy_check import TENANT, build_policies  # noqa: E402
from tests.support.nats_server import running_nats_server  # noqa: E402

from agent_fabric.admission.budget_config import BudgetConfig  # noqa: E402
from agent_fabric.admission.checks import Actor, Admission  # noqa: E402
from agent_fabric.events.envelope import TaskEvent  # noqa: E402
from agent_fabric.fabric import Fabric, open_fabric  # noqa: E402
from agent_fabric.settings import (  # noqa: E402
    DatabaseSettings,
    NatsSettings,
    PolicySettings,
    SecuritySettings,
    Settings,
)
from agent_fabric.tasks import TaskSpec  # noqa: E402
from agent_fabric.tenants import TenantConfig  # noqa: E402

PG_DSN = os.environ.get("AGENT_FABRIC_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def spec(i: int) -> TaskSpec:
    return TaskSpec.model_validate(
        {
            "job_id": f"bench-{uuid.uuid4().hex[:12]}-{i}",
            "tenant_id": TENANT,
            "agent_definition": {"runtime": "builtin", "agent_id": "agent-1"},
            "task": {"type": "echo", "input": {"n": i}},
            "metadata": {"workspace_id": "ws-1", "user": "alice", "estimate_cost_usd": "0.001"},
        }
    )


async def run(admission: Admission | None, rate: float, seconds: float) -> tuple[list[float], float, float]:
    """Arrivals at `rate`; each task admitted (or, with no admission, only timed: the harness)."""
    total = int(rate * seconds)
    specs = [spec(i) for i in range(total)]
    latencies: list[float] = []
    actor = Actor("alice", "agent")

    async def one(s: TaskSpec, arrived: float) -> None:
        event = TaskEvent(uuid.uuid4().hex, "bench", s)
        if admission is not None:
            decision = admission.check(s, actor, door="nats")
            admitted = await admission.admit(event, decision, actor)
            assert admitted.verdict == "run"
        latencies.append(time.perf_counter() - arrived)

    loop = asyncio.get_running_loop()
    tasks = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i, s in enumerate(specs):
        due = wall0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(s, due)))
    await asyncio.gather(*tasks)
    return latencies, time.process_time() - cpu0, time.perf_counter() - wall0


def report(name: str, latencies: list[float], cpu: float, wall: float) -> None:
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    n = len(ms)
    print(
        f"{name:<36} {n / wall:7.0f} tasks/s  latency p50 {p(0.5):6.2f} ms  p99 {p(0.99):6.2f} ms  "
        f"CPU {cpu / n * 1e6:6.1f} us/task"
    )


async def prepare(fabric: Fabric) -> Admission:
    gov = fabric.governance
    for stored in build_policies(1000):
        await gov.policies.update_policy(stored.id, stored.policy, actor="bench")
    print(f"{gov.policies.rule_count} rules loaded")
    return Admission(fabric.drivers, gov.policies, gov.approvals, gov.budgets)


async def limit_budget(fabric: Fabric) -> None:
    gov = fabric.governance
    await gov.budgets.update(TENANT, "tenant", BudgetConfig(max_cost_usd=1e9), actor="bench")
    gov.tenants.apply(TENANT, 10**9, TenantConfig(mode="LIVE"))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    name = f"af_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = PG_DSN.replace("postgresql://", "postgresql+asyncpg://", 1).rsplit("/", 1)[0] + f"/{name}"
    try:
        with tempfile.TemporaryDirectory() as tmp, running_nats_server(Path(tmp) / "nats") as (nats_url, _):
            settings = Settings(
                state_dir=Path(tmp),
                log_json=False,
                log_level="WARNING",
                nats=NatsSettings(url=nats_url),
                database=DatabaseSettings(url=url),
                jwt=SecuritySettings(secret="bench-secret-0123456789-abcdefghijklmnop"),
                policy=PolicySettings(reload_seconds=3600),
            )
            async with open_fabric(settings) as fabric:
                admission = await prepare(fabric)
                await run(admission, args.rate, 1.0)  # warm up
                report("harness only (the baseline)", *await run(None, args.rate, args.seconds))
                report("policy only (no budget applies)", *await run(admission, args.rate, args.seconds))
                await limit_budget(fabric)
                await run(admission, args.rate, 1.0)
                report("policy + budget reservation (LIVE)", *await run(admission, args.rate, args.seconds))
                await fabric.governance.audit.flush()
    finally:
        admin = await asyncpg.connect(PG_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
