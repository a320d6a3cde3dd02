"""Peer run: Celery with Redis as broker and result backend, the fabric run's load shape.

The worker is `celery worker` in a process of its own with the threads pool at the fabric's
worker concurrency (one process, as `agent-fabric serve` is; the prefork pool with one child per
core was slower here, see README). Redis is AGENT_FABRIC_TEST_REDIS_URL's server on database
BENCH_CELERY_DB (9 unless set), which is flushed before and after, and only that database. Submit
is Celery's `send_task` (a synchronous LPUSH, called from the load generator's event loop); the
result backend stores each result and publishes it on a channel named like its key, which the load
generator listens on with one pattern subscription."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from scripts.bench.peer_worker import warmed_run, worker_process
from scripts.bench.window import Window

NAME = "Celery"
CHANNEL_PREFIX = "celery-task-meta-"


def missing() -> str | None:
    """Why this peer cannot run here, or None."""
    return "celery not installed" if importlib.util.find_spec("celery") is None else None


def celery_redis_url(redis_url: str) -> str:
    """The same Redis server, database BENCH_CELERY_DB (a spare one: the whole database is flushed)."""
    db = int(os.environ.get("BENCH_CELERY_DB", "9"))
    parts = urlsplit(redis_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


async def _drive(url: str, n: int, inflight: int, pid: int) -> dict[str, float]:
    from scripts.bench.peers_celery_app import ECHO, RESULT_CHANNELS, make_app

    app = make_app(url, results=False)
    client = aioredis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.psubscribe(RESULT_CHANNELS)
    windows: list[Window] = []

    async def listen() -> None:
        async for msg in pubsub.listen():
            if msg["type"] == "pmessage" and windows:
                windows[-1].finished(msg["channel"].decode()[len(CHANNEL_PREFIX) :])

    listener = asyncio.create_task(listen())

    async def submit(job: str) -> None:
        app.send_task(ECHO, args=[{"i": job}], task_id=job)

    async def measure(count: int) -> dict[str, float]:
        windows.append(Window(count, inflight))
        return await windows[-1].run(submit)

    try:
        return await warmed_run(measure, n, pid)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await pubsub.aclose()
        await client.aclose()
        app.close()


def run(redis_url: str, n: int, inflight: int, concurrency: int, log_dir: Path) -> dict[str, float]:
    url = celery_redis_url(redis_url)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "scripts.bench.peers_celery_app",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "WARNING",
        # A lone worker: no cluster chatter on top of the tasks.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    flush = redis.Redis.from_url(url)
    flush.flushdb()
    try:
        with worker_process(NAME, argv, {"BENCH_CELERY_REDIS_URL": url}, log_dir / "celery-worker.log") as proc:
            return asyncio.run(_drive(url, n, inflight, proc.pid))
    finally:
        flush.flushdb()
        flush.close()
