"""Process-agent benchmark: spawn to ready, task start from a warm pool, throughput beside builtin.

    python scripts/bench/process_agents.py [--spawns 20] [--starts 500] [--tasks 2000] [--inflight 64]

1. cold spawn: start the example echo agent (examples/agents/echo) `--spawns` times, one after the
   other, and time process creation to its `ready` line; with isolation `process` (control group,
   scrubbed environment, working directory, and with bubblewrap installed the network namespace
   and the egress relay) and `none`.
2. warm start: a pool with min_idle warm processes; `--starts` echo tasks one at a time through
   the process driver: acquire an idle process, send the task, read the result. The round trip
   bounds the task start from above.
3. throughput: a real `agent-fabric serve` (Postgres + Redis, fresh nats-server); `--tasks` echo
   tasks on agent.execute.normal with `--inflight` outstanding, builtin echo and then the same
   through the process agent (max_concurrent_tasks processes), same server, same run.
Numbers depend on the machine's load; a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.bench.throughput import drive, drop_database, make_database, serve_env  # noqa: E402
from scripts.bench.window import percentile  # noqa: E402
from tests.support.nats_server import running_nats_server  # noqa: E402
from tests.support.serve import ServeProcess  # noqa: E402

from agent_fabric.admission.policy_model import Effect, PolicyDecision  # noqa: E402
from agent_fabric.agents import cgroups  # noqa: E402
from agent_fabric.agents.agent_process import AgentProcess  # noqa: E402
from agent_fabric.agents.isolation import IsolationManager  # noqa: E402
from agent_fabric.agents.lifecycle import LifecycleManager  # noqa: E402
from agent_fabric.agents.process_logs import AgentLogs  # noqa: E402
from agent_fabric.agents.process_spec import IsolationConfig, ProcessAgent, RuntimeConfig  # noqa: E402
from agent_fabric.agents.registry import AgentRegistry  # noqa: E402
from agent_fabric.agents.states import AgentStatus  # noqa: E402
from agent_fabric.drivers.process import ProcessDriver  # noqa: E402
from agent_fabric.storage.agent_process_tables import agent_process_runs  # noqa: E402
from agent_fabric.storage.agent_run_store import AgentRunStore  # noqa: E402
from agent_fabric.storage.agent_tables import agents  # noqa: E402
from agent_fabric.tasks import TaskSpec  # noqa: E402

ECHO = ROOT / "examples" / "agents" / "echo"


def echo_agent(level: str, min_idle: int = 0) -> ProcessAgent:
    runtime = RuntimeConfig(heartbeat_interval=5, min_idle=min_idle, max_processes=max(1, min_idle))
    return ProcessAgent(
        f"bench-echo-{level}",
        "bench",
        "echo",
        ECHO,
        ["python", "agent.py"],
        runtime=runtime,
        isolation=IsolationConfig(level=level),  # type: ignore[arg-type]
    )


class _OpenGate:
    """Egress decisions for the benchmark: everything passes (no request is made anyway)."""

    def for_agent(self, agent_id: str, tenant_id: str, allowlist: list[str]) -> Any:
        async def decide(scheme: str, host: str, port: int, url: str) -> tuple[bool, str]:
            return True, "benchmark"

        return decide


async def cold_spawns(tmp: Path, level: str, n: int) -> list[float]:
    bwrap = shutil.which("bwrap")
    isolation = IsolationManager(tmp / "work", cgroups.detect(), _OpenGate() if bwrap else None, bwrap)  # type: ignore[arg-type]
    agent = echo_agent(level)
    sandbox = await isolation.create_sandbox(agent.id, agent.isolation)
    times = []
    for i in range(n):
        began = time.perf_counter()
        proc = AgentProcess(agent.id, f"{agent.id}/{i}", sandbox.launch(agent, f"p{i}", 5), AgentLogs())
        await proc.start()
        assert await proc.wait_ready(30), "the echo agent did not get ready"
        times.append(time.perf_counter() - began)
        await proc.stop(1, 1, "bench")
        await proc.aclose()
        sandbox.finished(f"p{i}")
    await isolation.destroy_sandbox(agent.id)
    return times


class _Ctx:
    """Just enough of a RunContext for the driver: the benchmark has no task store."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec, self.attempt, self.checkpoint = spec, 1, None

    async def progress(self, data: dict[str, Any]) -> None: ...
    async def save_checkpoint(self, state: Any) -> None: ...
    def add_usage(self, **usage: Any) -> None: ...


class _Directory:
    def __init__(self, agent: ProcessAgent) -> None:
        self.agent = agent

    async def process_agent(self, agent_id: str) -> ProcessAgent | None:
        return self.agent


class _AllowAll:
    def decide(self, action: Any, ctx: Any, **_: Any) -> PolicyDecision:
        return PolicyDecision(Effect.ALLOW, action.name)


async def warm_starts(tmp: Path, n: int) -> list[float]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp / 'runs.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: agent_process_runs.create(c))
    lifecycle = LifecycleManager(
        IsolationManager(tmp / "work", cgroups.detect()), AgentRunStore(engine, "bench"), None, None, "bench"
    )  # type: ignore[arg-type]
    await lifecycle.start()
    agent = echo_agent("process", min_idle=2)
    driver = ProcessDriver(lifecycle, _Directory(agent), _AllowAll())  # type: ignore[arg-type]
    pool = await lifecycle.ensure_running(agent)
    while sum(p.ready_at is not None for p in pool.processes.values()) < 2:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    times = []
    for i in range(n):
        spec = TaskSpec.model_validate(
            {
                "job_id": f"w{i}",
                "tenant_id": "bench",
                "agent_definition": {"runtime": "process", "agent_id": agent.id},
                "task": {"type": "echo", "input": {"i": i}},
            }
        )
        began = time.perf_counter()
        await driver.run(_Ctx(spec))
        times.append(time.perf_counter() - began)
    await lifecycle.shutdown(2)
    await engine.dispose()
    return times


async def register_echo(db_url: str, packages: Path, tenant: str) -> str:
    engine = create_async_engine(db_url)
    name = f"EchoAgent-{tenant}"
    async with engine.begin() as conn:
        from sqlalchemy import select

        agent_id = (await conn.execute(select(agents.c.id).where(agents.c.name == name))).scalar_one()
        await conn.execute(update(agents).where(agents.c.id == agent_id).values(tenant_id=tenant))
    await AgentRegistry(engine, lambda _t: "SANDBOX").transition(
        agent_id, AgentStatus.REGISTERED, reason="bench", actor="bench"
    )
    await engine.dispose()
    return str(agent_id)


async def throughput(url: str, n: int, inflight: int, agent_id: str | None, tenant: str) -> dict[str, float]:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    definition = {"runtime": "process", "agent_id": agent_id} if agent_id else {"runtime": "builtin"}

    async def publish(job: str) -> None:
        data = {
            "job_id": job,
            "tenant_id": tenant,
            "agent_definition": definition,
            "task": {"type": "echo", "input": {"i": job}},
        }
        event = {"specversion": "1.0", "id": job, "source": "bench", "type": "agent.execute", "data": data}
        await js.publish("agent.execute.normal", orjson.dumps(event))

    try:
        await drive(nc, min(200, n), inflight, publish, "agent.status.completed")  # warm-up
        return await drive(nc, n, inflight, publish, "agent.status.completed")
    finally:
        await nc.close()


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spawns", type=int, default=20)
    parser.add_argument("--starts", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--processes", type=int, default=8, help="max_concurrent_tasks of the echo agent")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        isolated = asyncio.run(cold_spawns(tmp, "process", args.spawns))
        plain = asyncio.run(cold_spawns(tmp, "none", args.spawns))
        warm = asyncio.run(warm_starts(tmp, args.starts))
        tenant = f"bench{uuid.uuid4().hex[:6]}"
        packages = tmp / "packages"
        target = packages / "echo"
        shutil.copytree(ECHO, target)
        manifest = target / ".env.discovery"
        manifest.write_text(
            manifest.read_text().replace("AGENT_NAME=EchoAgent", f"AGENT_NAME=EchoAgent-{tenant}")
            + f"AGENT_MIN_IDLE={args.processes}\n"
        )
        with running_nats_server(tmp / "nats") as (url, _):
            db_name, db_url = asyncio.run(make_database())
            env = serve_env(
                url,
                db_url,
                AGENT_FABRIC_AGENTS_DIR=str(packages),
                AGENT_FABRIC_AGENTS_CONFIG=orjson.dumps({"max_concurrent_tasks": args.processes}).decode(),
            )
            server = ServeProcess(tmp / "fabric", env)
            try:
                server.start()
                agent_id = asyncio.run(register_echo(db_url, packages, tenant))
                builtin = asyncio.run(throughput(url, args.tasks, args.inflight, None, tenant))
                process = asyncio.run(throughput(url, args.tasks, args.inflight, agent_id, tenant))
            finally:
                server.stop()
                asyncio.run(drop_database(db_name))
    print(f"\n{os.cpu_count()} cores, {cgroups.detect().description if cgroups.detect() else 'no cgroups (rlimits)'}\n")
    print("| measure | n | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    print(f"| cold spawn to ready, isolation process | {len(isolated)} | {ms(isolated, 0.5)} | {ms(isolated, 0.99)} |")
    print(f"| cold spawn to ready, isolation none | {len(plain)} | {ms(plain, 0.5)} | {ms(plain, 0.99)} |")
    print(
        f"| task round trip from a warm pool (bounds task start) | {len(warm)} | {ms(warm, 0.5)} | {ms(warm, 0.99)} |"
    )
    print(f"\n{args.tasks} echo tasks, {args.inflight} in flight, {args.processes} agent processes\n")
    print("| runtime | tasks/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for name, r in (("builtin echo", builtin), ("process agent echo", process)):
        print(f"| {name} | {r['rate']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} |")


if __name__ == "__main__":
    main()
