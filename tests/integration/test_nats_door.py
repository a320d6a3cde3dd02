"""Agents publishing CloudEvents straight to NATS, and every kind of bad input on that door."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent
from nats.aio.client import Client
from nats.js.errors import APIError
from sqlalchemy import select, update

from agent_fabric import names
from agent_fabric.storage.tables import dead_letters, tasks
from tests.conftest import RunningApp, make_settings, new_job_id, running_app


def structured(data: Any, *, event_id: str | None = None, type_: str = "agent.execute") -> bytes:
    return orjson.dumps(
        {"specversion": "1.0", "id": event_id or uuid.uuid4().hex, "source": "test/agent", "type": type_, "data": data}
    )


def task(job_id: str, kind: str = "echo", inp: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": kind, "input": inp if inp is not None else {"msg": "hi"}},
        **extra,
    }


@asynccontextmanager
async def collect(nc: Client, subject: str) -> AsyncIterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    async def on_msg(msg: Any) -> None:
        seen.append(orjson.loads(msg.data))

    sub = await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    try:
        yield seen
    finally:
        await sub.unsubscribe()


async def until(predicate: Any, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def for_job(events: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["data"].get("job_id") == job_id]


async def test_published_task_completes_with_result_event(fabric_app: RunningApp, nc: Client) -> None:
    job = new_job_id("nats")
    async with collect(nc, "agent.status.completed") as completed:
        await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=fabric_app.auth())
        await until(lambda: for_job(completed, job))
    event = for_job(completed, job)[0]
    assert event["type"] == "agent.status.completed" and event["specversion"] == "1.0"
    assert event["data"]["status"] == "completed" and event["data"]["result"] == {"msg": "hi"}
    assert event["data"]["attempts"] == 1 and set(event["data"]["usage"]) == {"tokens", "compute_seconds", "cost_usd"}


async def test_binary_mode_over_nats_headers(fabric_app: RunningApp, nc: Client) -> None:
    job = new_job_id("bin")
    message = to_binary_event(
        CloudEvent(
            attributes={
                "type": "agent.execute",
                "source": "test",
                "id": uuid.uuid4().hex,
                "datacontenttype": "application/json",
            },
            data=task(job),
        )
    )
    async with collect(nc, "agent.status.completed") as completed:
        await nc.jetstream().publish(
            "agent.execute.high", message.body, headers={**message.headers, **fabric_app.auth()}
        )
        await until(lambda: for_job(completed, job))


async def test_failing_task_gives_failed_event_with_code_and_message(fabric_app: RunningApp, nc: Client) -> None:
    job = new_job_id("fail")
    async with collect(nc, "agent.status.failed") as failed:
        await nc.jetstream().publish(
            "agent.execute.low",
            structured(task(job, "fail", {"code": "nope", "message": "it broke"})),
            headers=fabric_app.auth(),
        )
        await until(lambda: for_job(failed, job))
    error = for_job(failed, job)[0]["data"]["error"]
    assert error == {"code": "nope", "message": "it broke"}


@pytest.mark.parametrize(
    "make_body, code",
    [
        (lambda job: structured({**task(job), "agent_definition": {"runtime": "agent-zero"}}), "runtime_unavailable"),
        (lambda job: structured(task(job, "juggle")), "unknown_task_type"),
        (lambda job: structured(task(job, "sleep", {"seconds": "soon"})), "invalid_task"),
        (lambda job: structured({**task(job), "extra_field": True}), "invalid_task"),
        (lambda job: structured(task(job), type_="com.example.other"), "invalid_event"),
        (lambda job: orjson.dumps({"id": "1", "data": task(job)}), "invalid_event"),
    ],
)
async def test_bad_task_with_readable_job_id_gets_a_failure_event(
    fabric_app: RunningApp, nc: Client, make_body: Any, code: str
) -> None:
    job = new_job_id("bad")
    async with collect(nc, "agent.status.failed") as failed:
        await nc.jetstream().publish("agent.execute.normal", make_body(job), headers=fabric_app.auth())
        await until(lambda: for_job(failed, job))
    data = for_job(failed, job)[0]["data"]
    assert data["status"] == "rejected" and data["error"]["code"] == code and data["error"]["message"]
    record = await fabric_app.fabric.store.get("default", job)
    assert record is not None and record.status.value == "rejected"
    await _consumer_still_works(fabric_app, nc)


@pytest.mark.parametrize(
    "body, code",
    [
        (b"this is not json", "invalid_event"),
        (b"[1,2,3]", "invalid_event"),
        (structured({"agent_definition": {"runtime": "builtin"}, "task": {"type": "echo"}}), "invalid_task"),
        (
            structured(
                {
                    "job_id": "spaces are not allowed",
                    "agent_definition": {"runtime": "builtin"},
                    "task": {"type": "echo"},
                }
            ),
            "invalid_task",
        ),
        (structured("a string, not an object"), "invalid_event"),
    ],
)
async def test_unreadable_event_becomes_a_dead_letter(
    fabric_app: RunningApp, nc: Client, body: bytes, code: str
) -> None:
    started = datetime.now(UTC)
    async with collect(nc, names.DEADLETTER_SUBJECT) as letters:
        ack = await nc.jetstream().publish("agent.execute.normal", body, headers=fabric_app.auth())
        await until(lambda: any(e["data"]["stream_seq"] == ack.seq for e in letters))
    letter = next(e for e in letters if e["data"]["stream_seq"] == ack.seq)
    assert letter["type"] == "agent.deadletter" and letter["data"]["code"] == code and letter["data"]["reason"]
    async with fabric_app.fabric.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(dead_letters).where(dead_letters.c.stream_seq == ack.seq, dead_letters.c.received_at >= started)
            )
        ).all()
    assert len(rows) == 1 and rows[0].payload == body and rows[0].reason_code == code
    async with asyncio.timeout(15):  # termed (just after the dead letter), not left to be redelivered forever
        while (await nc.jetstream().stream_info(names.TASK_STREAM)).state.messages:
            await asyncio.sleep(0.05)
    await _consumer_still_works(fabric_app, nc)


async def test_oversized_event_is_refused_at_publish(tmp_path: Path, nats_url: str, nc: Client) -> None:
    """The stream's max_msg_size is the fabric's event limit: the publisher hears it at once."""
    async with running_app(make_settings(tmp_path, nats_url, max_event_bytes=64 * 1024)):
        blob = "x" * (64 * 1024)
        with pytest.raises(APIError) as refused:
            await nc.jetstream().publish("agent.execute.normal", structured(task(new_job_id(), inp={"blob": blob})))
        assert "message size exceeds maximum" in str(refused.value).lower()
        info = await nc.jetstream().stream_info(names.TASK_STREAM)
        assert info.state.messages == 0


async def test_duplicate_cloudevent_id_runs_once(fabric_app: RunningApp, nc: Client) -> None:
    job = new_job_id("dup")
    event_id = uuid.uuid4().hex
    async with collect(nc, "agent.status.completed") as completed:
        js = nc.jetstream()
        first = await js.publish(
            "agent.execute.normal",
            structured(task(job), event_id=event_id),
            headers={names.MSG_ID_HEADER: event_id, **fabric_app.auth()},
        )
        second = await js.publish(
            "agent.execute.normal",
            structured(task(job), event_id=event_id),
            headers={names.MSG_ID_HEADER: event_id, **fabric_app.auth()},
        )
        assert second.duplicate and not first.duplicate
        # Another submission of the same job under a new event id: recognised by job_id.
        await until(lambda: for_job(completed, job))
        await js.publish("agent.execute.normal", structured(task(job)), headers=fabric_app.auth())
        await asyncio.sleep(1.0)
    assert len(for_job(completed, job)) == 1
    record = await fabric_app.fabric.store.get("default", job)
    assert record is not None and record.attempts == 1


@pytest.mark.parametrize("finished_ago_s", [0.0, 3600.0])
async def test_duplicate_of_unmarked_result_is_not_published_again(
    fabric_app: RunningApp, nc: Client, finished_ago_s: float
) -> None:
    """A finished task whose "published" note is missing: a crash between publish and note (old),
    or a replica still writing the note (recent). Either way the result is in AGENT_STATUS, so the
    fabric finds it there (the recent one after the grace period), notes it, and core subscribers
    see it once (issue 11)."""
    job = new_job_id("mark")
    async with collect(nc, "agent.status.completed") as completed:
        await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=fabric_app.auth())
        await until(lambda: for_job(completed, job))
        await until_marked(fabric_app, job)
        finished_at = datetime.now(UTC) - timedelta(seconds=finished_ago_s)
        async with fabric_app.fabric.engine.begin() as conn:
            await conn.execute(
                update(tasks)
                .where(tasks.c.tenant_id == "default", tasks.c.job_id == job)
                .values(result_published=False, finished_at=finished_at)
            )
        await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=fabric_app.auth())
        await until_marked(fabric_app, job)
        await asyncio.sleep(0.5)
    assert [e["id"] for e in for_job(completed, job)] == [f"default/{job}/result"]


async def until_marked(app: RunningApp, job: str) -> None:
    async with asyncio.timeout(10):
        while True:
            record = await app.fabric.store.get("default", job)
            if record is not None and record.result_published:
                return
            await asyncio.sleep(0.05)


async def test_subject_priority_wins_over_data(fabric_app: RunningApp, nc: Client) -> None:
    job = new_job_id("prio")
    async with collect(nc, "agent.status.completed") as completed:
        await nc.jetstream().publish(
            "agent.execute.critical", structured(task(job, priority="low")), headers=fabric_app.auth()
        )
        await until(lambda: for_job(completed, job))
    record = await fabric_app.fabric.store.get("default", job)
    assert record is not None and record.priority == "critical"


async def _consumer_still_works(app: RunningApp, nc: Client) -> None:
    job = new_job_id("after")
    async with collect(nc, "agent.status.completed") as completed:
        await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=app.auth())
        await until(lambda: for_job(completed, job))
