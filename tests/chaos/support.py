"""What the fault tests share: publishing tasks through trouble, waiting for outcomes, and reading
the AGENT_STATUS stream the way a result reader should (by CloudEvent id)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric import names
from agent_fabric.security.tokens import TokenService
from agent_fabric.settings import SecuritySettings, Settings
from agent_fabric.storage.tables import tasks
from agent_fabric.tasks import TaskStatus


def task_event(job_id: str, kind: str = "echo", inp: dict[str, Any] | None = None) -> tuple[bytes, str]:
    """(structured CloudEvent, its id) of a builtin task."""
    event_id = uuid.uuid4().hex
    body = orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "test/chaos",
            "type": names.TASK_EVENT_TYPE,
            "data": {
                "job_id": job_id,
                "agent_definition": {"runtime": "builtin"},
                "task": {"type": kind, "input": inp if inp is not None else {"msg": job_id}},
            },
        }
    )
    return body, event_id


def publisher_auth(jwt_secret: str) -> dict[str, str]:
    """The credential header a NATS publisher sends (issue 15), for a fabric with this JWT secret."""
    tokens = TokenService(Settings(jwt=SecuritySettings(secret=jwt_secret)))
    token = tokens.issue(role="admin", subject="chaos", tenant_id=None)
    return {"Authorization": f"Bearer {token}"}


async def publish_through(
    nc: Client, subject: str, body: bytes, event_id: str, *, auth: dict[str, str], timeout: float = 60
) -> None:
    """Publish to JetStream, retrying through a leader election or a reconnect. The same
    Nats-Msg-Id each time, so a retry of a publish that did land is dropped by the stream."""
    js = nc.jetstream()
    async with asyncio.timeout(timeout):
        while True:
            try:
                await js.publish(subject, body, timeout=3, headers={names.MSG_ID_HEADER: event_id, **auth})
                return
            except Exception:
                await asyncio.sleep(0.3)


async def statuses(engine: AsyncEngine, jobs: list[str]) -> Counter[str]:
    """How many of `jobs` are in each status, read straight from the fabric's database."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(tasks.c.job_id, tasks.c.status).where(tasks.c.job_id.in_(jobs)))).all()
    seen: Counter[str] = Counter(str(row.status) for row in rows)
    seen["missing"] = len(jobs) - len(rows)
    return +seen  # drop zero counts


async def until_all_completed(engine: AsyncEngine, jobs: list[str], timeout: float) -> None:
    """Until every job is completed; fails early, naming what happened, if one ends otherwise."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                seen = await statuses(engine, jobs)
            except Exception:  # the database may be the thing that is away
                await asyncio.sleep(0.5)
                continue
            finals = {s for s in seen if s != "missing" and TaskStatus(s).is_terminal}
            assert finals <= {"completed"}, f"tasks ended otherwise: {dict(seen)}"
            if seen["completed"] == len(jobs):
                return
            await asyncio.sleep(0.3)


async def until_all_published(engine: AsyncEngine, jobs: list[str], timeout: float = 90) -> None:
    """Until every job's result is noted as published: a task is `completed` in the database a
    moment before its result is in AGENT_STATUS, longer on a loaded machine; and a replica killed
    between its ack and its note leaves the note to the result sweep (30 s grace, every 10 s)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                async with engine.connect() as conn:
                    query = select(tasks.c.job_id).where(tasks.c.job_id.in_(jobs), tasks.c.result_published.is_(True))
                    if len((await conn.execute(query)).all()) == len(jobs):
                        return
            except Exception:  # the database may be the thing that is away
                pass
            await asyncio.sleep(0.3)


async def stored_results(nc: Client, timeout: float = 30) -> Counter[str]:
    """How many times each result CloudEvent id is stored in AGENT_STATUS (results only)."""
    js = nc.jetstream()
    counts: Counter[str] = Counter()
    async with asyncio.timeout(timeout):
        while True:
            try:
                info = await js.stream_info(names.STATUS_STREAM)
                break
            except Exception:
                await asyncio.sleep(0.3)
        seq = info.state.first_seq
        while seq <= info.state.last_seq:
            try:
                msg = await js.get_msg(names.STATUS_STREAM, seq)
            except NotFoundError:
                seq += 1
                continue
            except Exception:
                await asyncio.sleep(0.3)
                continue
            event = orjson.loads(msg.data or b"{}")
            if str(event.get("id", "")).endswith("/result"):
                counts[event["id"]] += 1
            seq += 1
    return counts
