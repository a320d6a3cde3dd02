"""Progress on Redis pub/sub `langgraph:stream:{job_id}`, the SSE stream and its resume,
readiness naming the failing dependency, and the metrics series."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from agent_fabric.outbound.progress import EVAL_SLICE, ProgressBus, open_progress_bus
from tests.conftest import RunningApp, make_settings, new_job_id, running_app
from tests.support.nats_server import free_port, wait_for_port


def sleep_task(job: str, seconds: float) -> dict[str, Any]:
    return {
        "job_id": job,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": "sleep", "input": {"seconds": seconds}},
    }


async def test_progress_reaches_redis_channel(tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str) -> None:
    job = new_job_id("redis")
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"langgraph:stream:{job}")
    async with running_app(make_settings(tmp_path, nats_url, database_url=postgres_url, redis_url=redis_url)) as app:
        await app.client.post("/api/v1/tasks", json=sleep_task(job, 1.5), headers=app.auth())
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(15):
            async for message in pubsub.listen():
                events.append(orjson.loads(message["data"]))
                if events[-1]["kind"] == "end":
                    break
    await pubsub.aclose()
    await redis.aclose()
    kinds = [(e["kind"], e["status"]) for e in events]
    assert kinds[0] == ("state", "running")
    assert ("progress", None) in kinds
    assert kinds[-2:] == [("state", "completed"), ("end", "completed")]
    assert all(e["job_id"] == job and e["tenant_id"] == "default" for e in events)


async def read_sse(app: RunningApp, job: str, last_event_id: str | None = None) -> list[dict[str, Any]]:
    headers = app.auth()
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(20), app.client.stream("GET", f"/api/v1/tasks/{job}/events", headers=headers) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, Any] = {}
        async for line in resp.aiter_lines():
            if line.startswith("id: "):
                frame["id"] = line[4:]
            elif line.startswith("event: "):
                frame["event"] = line[7:]
            elif line.startswith("data: "):
                frame["data"] = orjson.loads(line[6:])
            elif line == "" and frame:
                frames.append(frame)
                frame = {}
    return frames


async def test_sse_streams_live_and_resumes_with_last_event_id(fabric_app: RunningApp) -> None:
    job = new_job_id("sse")
    await fabric_app.client.post("/api/v1/tasks", json=sleep_task(job, 1.2), headers=fabric_app.auth())
    frames = await read_sse(fabric_app, job)
    ids = [f["id"] for f in frames]
    assert frames[0]["event"] == "state" and frames[0]["data"]["status"] == "queued"
    assert frames[-1]["event"] == "end" and frames[-1]["data"]["status"] == "completed"
    assert len(ids) == len(set(ids)) and any(f["event"] == "progress" for f in frames)
    # Replayed from the event log or live, every time is UTC written with "Z" (SQLite too).
    assert all(f["data"]["time"].endswith("Z") for f in frames), [f["data"]["time"] for f in frames]
    resumed = await read_sse(fabric_app, job, last_event_id=ids[1])
    assert [f["id"] for f in resumed] == ids[2:]


async def test_sse_for_another_tenant_is_refused(fabric_app: RunningApp) -> None:
    job = new_job_id("sse-t")
    await fabric_app.client.post(
        "/api/v1/tasks", json={**sleep_task(job, 0), "tenant_id": "pod-x"}, headers=fabric_app.auth()
    )
    response = await fabric_app.client.get(f"/api/v1/tasks/{job}/events", headers=fabric_app.auth("viewer", "pod-y"))
    assert response.status_code == 404


async def test_ready_names_a_dead_redis(tmp_path: Path, nats_url: str) -> None:
    port = free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        async with running_app(make_settings(tmp_path, nats_url, redis_url=f"redis://127.0.0.1:{port}/0")) as app:
            assert (await app.client.get("/ready")).status_code == 200
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
            response = await app.client.get("/ready")
            assert response.status_code == 503
            assert response.json()["failing"] == ["progress"]
            assert (await app.client.get("/health")).status_code == 200
    finally:
        if redis_proc.poll() is None:
            redis_proc.kill()


async def test_metrics_expose_the_seed_series(fabric_app: RunningApp) -> None:
    job = new_job_id("m")
    message = {"job_id": job, "agent_definition": {"runtime": "builtin"}, "task": {"type": "echo"}}
    await fabric_app.client.post("/api/v1/tasks", json=message, headers=fabric_app.auth())
    async with asyncio.timeout(10):
        while (await fabric_app.fabric.store.get("default", job)).status.value != "completed":  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
    text = (await fabric_app.client.get("/metrics")).text
    assert 'agent_fabric_tasks_total{agent_id="builtin",status="completed"}' in text
    for series in (
        "agent_fabric_task_duration_seconds_bucket",
        "agent_fabric_agents_active",
        "agent_fabric_scheduling_latency_seconds_bucket",
        "agent_fabric_tasks_held",
    ):
        assert series in text


async def _receive(bus: ProgressBus, job: str, count: int) -> list[int]:
    async with bus.subscribe("t-progress", job) as queue:
        for n in range(count):
            await bus.publish({"job_id": job, "tenant_id": "t-progress", "n": n})
        async with asyncio.timeout(10):
            return [(await queue.get())["n"] for _ in range(count)]


async def test_redis_progress_keeps_order_across_script_slices(redis_url: str) -> None:
    bus = await open_progress_bus(redis_url, None)  # type: ignore[arg-type]  # (no NATS: Redis is given)
    try:
        count = EVAL_SLICE * 2 + 7  # one flush of several EVALs
        assert await _receive(bus, new_job_id("slices"), count) == list(range(count))
    finally:
        await bus.aclose()


async def test_redis_without_scripts_gets_progress_by_pipeline() -> None:
    port = free_port()
    redis_proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--rename-command", "EVAL", ""),  # a server without scripts
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        bus = await open_progress_bus(f"redis://127.0.0.1:{port}/0", None)  # type: ignore[arg-type]
        try:
            job = new_job_id("noscript")
            assert await _receive(bus, job, 5) == [0, 1, 2, 3, 4]  # the refused flush is sent again
            assert await _receive(bus, job, 3) == [0, 1, 2]  # and later ones go by pipeline
        finally:
            await bus.aclose()
    finally:
        redis_proc.kill()
        redis_proc.wait(timeout=10)
