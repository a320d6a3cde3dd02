"""Peer run: taskiq with taskiq-nats on the benchmark's nats-server, the fabric run's load shape.

The worker is `taskiq worker` in a process of its own (one worker process, `concurrency` async
tasks at once, uvloop as taskiq picks it); results go to taskiq-nats's object-store result backend
and the load generator sees each one through the meta message its put publishes. Submit is
taskiq's own `kiq` (a JetStream publish awaiting the stream's ack, as the fabric's producer)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import nats
import orjson
from nats.aio.msg import Msg
from scripts.bench.peer_worker import warmed_run, worker_process
from scripts.bench.window import Window

NAME = "taskiq-nats"


def missing() -> str | None:
    """Why this peer cannot run here, or None."""
    absent = [m for m in ("taskiq", "taskiq_nats") if importlib.util.find_spec(m) is None]
    return f"{', '.join(absent)} not installed" if absent else None


async def _drive(url: str, n: int, inflight: int, pid: int) -> dict[str, float]:
    from scripts.bench.peers_taskiq_app import ECHO, RESULT_META_SUBJECTS, make_broker

    broker = make_broker(url)
    echo = broker.find_task(ECHO)
    assert echo is not None
    await broker.startup()
    nc = await nats.connect(url)
    try:

        async def measure(count: int) -> dict[str, float]:
            window = Window(count, inflight)

            async def on_result(msg: Msg) -> None:
                window.finished(orjson.loads(msg.data)["name"])

            sub = await nc.subscribe(RESULT_META_SUBJECTS, cb=on_result)
            await nc.flush()

            async def submit(job: str) -> None:
                await echo.kicker().with_task_id(job).kiq({"i": job})

            try:
                return await window.run(submit)
            finally:
                await sub.unsubscribe()

        return await warmed_run(measure, n, pid)
    finally:
        await nc.close()
        await broker.shutdown()


def run(url: str, n: int, inflight: int, concurrency: int, log_dir: Path) -> dict[str, float]:
    argv = [
        sys.executable,
        "-m",
        "taskiq",
        "worker",
        "scripts.bench.peers_taskiq_app:broker",
        "--workers",
        "1",
        "--max-async-tasks",
        str(concurrency),
        "--log-level",
        "WARNING",
    ]
    env = {"BENCH_TASKIQ_NATS_URL": url}
    with worker_process(NAME, argv, env, log_dir / "taskiq-worker.log") as proc:
        return asyncio.run(_drive(url, n, inflight, proc.pid))
