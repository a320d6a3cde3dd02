"""LLM gateway overhead: time to first token through the gateway minus direct, and calls/s.

    python scripts/bench/llm_gateway.py [--calls 300] [--seconds 5] [--concurrency 16]

Three processes: the OpenAI stand-in (tests/support/openai_standin.py), a real `agent-fabric
serve` (bundled nats-server, a throwaway Postgres database, Redis progress) whose gateway forwards
to it, and this client. Each round makes one streamed chat completion straight to the stand-in
and one through the gateway with an instance key, alternately, over kept-alive connections, and
times each from the request to the first content token. The gateway's overhead is the paired
difference (gateway minus direct), printed as p50/p99. Then calls/s: non-streamed completions
through the gateway at a fixed concurrency for a few seconds, once for a tenant without budget
limits and once for a tenant whose token budget has a limit (each call then reserves, settles and
folds in Postgres). A benchmark, not a test: numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.support.nats_server import free_port, wait_for_port  # noqa: E402
from tests.support.openai_standin import UPSTREAM_KEY  # noqa: E402
from tests.support.serve import ServeProcess  # noqa: E402

PG_DSN = os.environ.get("AGENT_FABRIC_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("AGENT_FABRIC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ttft(client: httpx.AsyncClient, url: str, key: str) -> float:
    """Milliseconds from sending a streamed completion to its first content token."""
    started = time.perf_counter()
    body = {**BODY, "stream": True}
    first = None
    async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data:") and '"content":"w' in line:
                first = (time.perf_counter() - started) * 1000
    assert first is not None
    return first


async def overhead(direct: str, gateway: str, key: str, calls: int) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(20):  # warm both paths (connections, caches)
            await ttft(client, direct, UPSTREAM_KEY)
            await ttft(client, gateway, key)
        pairs = []
        for _ in range(calls):
            d = await ttft(client, direct, UPSTREAM_KEY)
            g = await ttft(client, gateway, key)
            pairs.append((d, g))
    direct_ms = [d for d, _ in pairs]
    gateway_ms = [g for _, g in pairs]
    diff = [g - d for d, g in pairs]
    print(f"streamed calls: {calls} pairs")
    print(f"  TTFT direct      p50 {pct(direct_ms, 0.5):7.2f} ms   p99 {pct(direct_ms, 0.99):7.2f} ms")
    print(f"  TTFT via gateway p50 {pct(gateway_ms, 0.5):7.2f} ms   p99 {pct(gateway_ms, 0.99):7.2f} ms")
    mean = statistics.mean(diff)
    print(f"  overhead (paired) p50 {pct(diff, 0.5):7.2f} ms   p99 {pct(diff, 0.99):7.2f} ms   mean {mean:.2f} ms")


async def throughput(gateway: str, key: str, seconds: float, concurrency: int, label: str) -> None:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            response = await client.post(gateway, json=BODY, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, response.text
            done += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    print(f"calls/s through the gateway ({label}, concurrency {concurrency}): {done / elapsed:8.1f}")


def admin_token(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "agent_fabric", "token", "--role", "admin"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def start_standin(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests/support/openai_standin.py"), "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    name = f"bench_llm_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    db_url = PG_DSN.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    standin_port = free_port()
    standin = start_standin(standin_port)
    upstream = f"http://127.0.0.1:{standin_port}/v1"
    with tempfile.TemporaryDirectory() as state:
        upstreams = [{"name": "standin", "base_url": upstream, "api_key": UPSTREAM_KEY, "models": ["gpt-4o-mini"]}]
        env = {
            "AGENT_FABRIC_DATABASE_URL": db_url,
            "AGENT_FABRIC_REDIS_URL": REDIS_URL,
            "AGENT_FABRIC_LLM_UPSTREAMS": json.dumps(upstreams),
            "AGENT_FABRIC_LLM_PRICES": json.dumps({"gpt-4o-mini": {"input_per_1k": 0.15, "output_per_1k": 0.6}}),
            "AGENT_FABRIC_LOG_LEVEL": "WARNING",
            "AGENT_FABRIC_HTTP_RATE_LIMIT_PER_SECOND": "100000",
            "AGENT_FABRIC_HTTP_RATE_LIMIT_BURST": "100000",
        }
        fabric = ServeProcess(Path(state), env, name="bench-llm")
        try:
            wait_for_port(standin_port)
            fabric.start(timeout=60)
            token = admin_token({**fabric.env})
            auth = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=fabric.url, timeout=30) as api:
                keys = {}
                for tenant in ("bench-free", "bench-limited"):
                    minted = await api.post(
                        f"/api/v1/llm/keys?tenant_id={tenant}", headers=auth, json={"instance_id": "bench"}
                    )
                    keys[tenant] = minted.json()["api_key"]
                config = {"mode": "LIVE", "budget": {"max_tokens": 10**12, "period": "daily"}}
                assert (await api.put("/api/v1/config/bench-limited", headers=auth, json=config)).status_code == 200
            gateway = f"{fabric.url}/v1/chat/completions"
            print("(the machine is shared and loaded: read these as orders of magnitude)")
            await overhead(f"{upstream}/chat/completions", gateway, keys["bench-free"], args.calls)
            await throughput(gateway, keys["bench-free"], args.seconds, args.concurrency, "no budget limits")
            await throughput(gateway, keys["bench-limited"], args.seconds, args.concurrency, "LIVE token budget")
        finally:
            fabric.stop()
            standin.terminate()
            standin.wait(timeout=10)
            admin = await asyncpg.connect(PG_DSN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
