"""Agent registration and configuration delivery, through a running `agent-fabric serve` on its
embedded defaults (bundled nats-server with authentication, SQLite).

    python scripts/bench/agent_config.py [--agents 20] [--changes 100]

Registers agents directly (each registration adds a NATS user and reloads the bundled server),
connects as one of them with the credentials it received, subscribes to its control subject, then
times each `PUT /api/v1/agents/{id}/config` from the request to the moment the agent holds the
announcement (outbox -> JetStream -> the agent's core subscription). Prints percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nats

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.support.serve import JWT_SECRET, ServeProcess  # noqa: E402

from agent_fabric import names  # noqa: E402


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (
        f"n={len(ordered)} p50={at(0.5):.1f} ms p95={at(0.95):.1f} ms p99={at(0.99):.1f} ms "
        f"max={ordered[-1] * 1000:.1f} ms mean={statistics.fmean(ordered) * 1000:.1f} ms"
    )


async def run(agents: int, changes: int, state: Path) -> None:
    for name in ("AGENT_FABRIC_NATS_URL", "AGENT_FABRIC_DATABASE_URL"):  # embedded defaults
        os.environ.pop(name, None)
    server = ServeProcess(state, {"AGENT_FABRIC_LOG_LEVEL": "WARNING"}).start()
    os.environ["AGENT_FABRIC_JWT_SECRET"] = JWT_SECRET
    from agent_fabric.security.tokens import TokenService
    from agent_fabric.settings import Settings

    admin = TokenService(Settings(state_dir=state)).issue(
        role="admin", subject="bench", tenant_id=None, ttl_seconds=3600
    )
    headers = {"Authorization": f"Bearer {admin}"}
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
            registrations: list[float] = []
            first = None
            for i in range(agents):
                body = {
                    "agent_name": f"bench-{i}",
                    "agent_version": "1.0.0",
                    "agent_type": "bench",
                    "tenant_id": "pod-b",
                }
                started = time.perf_counter()
                response = await client.post("/api/v1/agents", json=body)
                registrations.append(time.perf_counter() - started)
                response.raise_for_status()
                first = first or response.json()
            print(f"registration (incl. NATS user + server reload): {percentiles(registrations)}")
            assert first is not None
            creds, agent_id = first["nats"], first["agent"]["agent_id"]
            nc = await nats.connect(creds["servers"], user=creds["user"], password=creds["password"])
            arrived: asyncio.Queue[float] = asyncio.Queue()

            async def on_msg(_msg: object) -> None:
                arrived.put_nowait(time.perf_counter())

            await nc.subscribe(names.agent_control_subject(agent_id), cb=on_msg)
            await nc.flush()
            latencies: list[float] = []
            for i in range(changes):
                started = time.perf_counter()
                response = await client.put(f"/api/v1/agents/{agent_id}/config", json={"settings": {"round": i}})
                response.raise_for_status()
                latencies.append(await asyncio.wait_for(arrived.get(), timeout=10) - started)
            print(f"config change -> agent's NATS subscription: {percentiles(latencies)}")
            await nc.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--changes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.agents, args.changes, Path(tmp)))


if __name__ == "__main__":
    if subprocess.run([sys.executable, "-c", "import agent_fabric"], capture_output=True).returncode != 0:
        sys.exit("install first: make install")
    main()
