"""WebSocket relay latency: a session event published on NATS until a /ws/agent/{id}/ client has it.

    python scripts/bench/ws_relay.py [--events 2000]

The same stack as agent_proxy.py (nats-server, throwaway Postgres, Redis, the stand-in Agent Zero,
a real `agent-fabric serve`). Opens a session over HTTP and connects a WebSocket client
(`websockets`) to it. Then publishes events one at a time on the session's subject
(`agent.sessions.<id>`), exactly as the replica running a message does after storing them, and
times each until the client receives it: NATS -> the fabric's subscription -> dedup by seq -> the
WebSocket frame -> the client. As a floor, the same publish to a plain NATS subscriber in this
process. Seed 000 allows 20 ms; the goal is under 5 ms. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import orjson
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from scripts.bench.agent_proxy import Stack, agent_zero_stack, open_sessions, percentile  # noqa: E402

from agent_fabric import names  # noqa: E402


def event(session_id: str, seq: int) -> bytes:
    at = datetime.now(UTC)
    return orjson.dumps({"session_id": session_id, "id": seq, "kind": "progress", "data": {"n": seq}, "at": at})


async def nats_floor(stack: Stack, count: int) -> list[float]:
    """Publish -> a plain subscriber on the same server: what any relay over NATS pays."""
    nc = await nats.connect(stack.nats_url)
    got: asyncio.Queue[float] = asyncio.Queue()

    async def on_msg(_: object) -> None:
        got.put_nowait(time.perf_counter())

    await nc.subscribe("bench.floor", cb=on_msg)
    await nc.flush()
    latencies = []
    for i in range(count):
        began = time.perf_counter()
        await nc.publish("bench.floor", event("floor", i))
        latencies.append(await got.get() - began)
    await nc.close()
    return latencies


async def relay(stack: Stack, count: int) -> list[float]:
    async with httpx.AsyncClient(timeout=30) as client:
        [(session_id, _)] = await open_sessions(client, stack, 1)
        view = (
            await client.get(
                f"{stack.fabric_url}/api/v2/agent/sessions/{session_id}",
                headers={"Authorization": f"Bearer {stack.token}"},
            )
        ).json()
    seq = int(view["last_event_id"])
    nc = await nats.connect(stack.nats_url)
    subject = names.agent_session_subject(session_id)
    ws_url = stack.fabric_url.replace("http://", "ws://", 1)
    latencies = []
    async with connect(f"{ws_url}/ws/agent/{session_id}/?token={stack.token}&last_event_id={seq}") as ws:
        assert orjson.loads(await ws.recv())["type"] == "session"
        for _ in range(count):
            seq += 1
            began = time.perf_counter()
            await nc.publish(subject, event(session_id, seq))
            frame = orjson.loads(await ws.recv())
            latencies.append(time.perf_counter() - began)
            assert frame["id"] == seq, frame
    await nc.close()
    return latencies


def line(name: str, latencies: list[float]) -> str:
    ms = [x * 1000 for x in latencies]
    return f"{name:<38} p50 {percentile(ms, 0.5):6.2f} ms  p99 {percentile(ms, 0.99):6.2f} ms  max {max(ms):6.2f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    async with agent_zero_stack() as stack:
        await relay(stack, 200)  # warm up
        relayed = await relay(stack, args.events)
        floor = await nats_floor(stack, args.events)
    print(f"events: {args.events}, one at a time")
    print(line("NATS publish -> subscriber (floor)", floor))
    print(line("NATS publish -> fabric -> WebSocket", relayed) + "   (seed <= 20 ms, goal < 5 ms)")


if __name__ == "__main__":
    asyncio.run(main())
