"""Issue 11, items 1 and 2: over-nested JSON on every door is refused as bad input, and no single
message can stop a priority class's fetch loop (a loop that dies anyway comes back, counted)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from nats.aio.client import Client
from sqlalchemy import select
from websockets.asyncio.client import connect

from agent_fabric import names
from agent_fabric.storage.tables import dead_letters
from tests.conftest import RunningApp, make_settings, new_job_id, running_app
from tests.integration.test_agent_sessions import az_app, frames_until, message, ws_base  # noqa: F401 (a fixture)
from tests.integration.test_nats_door import collect, for_job, structured, task, until
from tests.support.asgi_server import serving

DEEP_ARRAY = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 5_000 + b"1" + b"}" * 5_000


def finished(events: list[dict[str, Any]], job: str) -> list[dict[str, Any]]:
    """The job's result events (agent.status.* carries transitions too)."""
    return [e for e in for_job(events, job) if e["data"]["status"] not in ("queued", "running")]


def deep_task(job: str, levels: int) -> dict[str, Any]:
    """A valid-looking task whose input nests `levels` deep (orjson writes at most ~250)."""
    nested: Any = 1
    for _ in range(levels):
        nested = {"a": nested}
    return task(job, inp={"deep": nested})


@pytest.mark.parametrize("kind", ["array", "object", "task-input"])
async def test_deep_json_on_nats_is_dead_lettered_and_its_class_keeps_running(
    fabric_app: RunningApp, nc: Client, kind: str
) -> None:
    deep_job = new_job_id("deep")
    started = datetime.now(UTC)
    body = {"array": DEEP_ARRAY, "object": DEEP_OBJECT}.get(kind) or structured(deep_task(deep_job, 200))
    js = nc.jetstream()
    async with collect(nc, names.DEADLETTER_SUBJECT) as letters, collect(nc, "agent.status.*") as results:
        bad = await js.publish("agent.execute.normal", body, headers=fabric_app.auth())
        # Same class, right behind it: before the fix the class's fetch loop had died on the first.
        jobs = [new_job_id("after-deep") for _ in range(3)]
        for job in jobs:
            await js.publish("agent.execute.normal", structured(task(job)), headers=fabric_app.auth())
        await until(lambda: all(finished(results, job) for job in jobs), timeout=30)
        await until(lambda: any(e["data"].get("stream_seq") == bad.seq for e in letters) or finished(results, deep_job))
    assert all(finished(results, job)[0]["data"]["status"] == "completed" for job in jobs)
    if kind == "task-input":
        # It names a job: the publisher hears a failure event with the reason.
        event = finished(results, deep_job)[0]
        assert event["data"]["status"] == "rejected" and event["data"]["error"]["code"] == "json_too_deep"
    else:
        letter = next(e for e in letters if e["data"]["stream_seq"] == bad.seq)
        assert letter["data"]["code"] == "json_too_deep" and "levels deep" in letter["data"]["reason"]
        async with fabric_app.fabric.engine.connect() as conn:
            query = select(dead_letters).where(
                dead_letters.c.stream_seq == bad.seq, dead_letters.c.received_at >= started
            )
            rows = (await conn.execute(query)).all()
        assert len(rows) == 1 and rows[0].reason_code == "json_too_deep"
    assert fabric_app.fabric.consumer.dead_loops() == []
    # The bad one was termed; the good ones are acked just after their results go out.
    await _until_async(lambda: _stream_empty(js), timeout=15)


async def _stream_empty(js: Any) -> bool:
    return bool((await js.stream_info(names.TASK_STREAM)).state.messages == 0)


def _ce_structured(data: Any) -> tuple[dict[str, str], bytes]:
    body = b'{"specversion":"1.0","id":"x1","source":"t","type":"agent.execute","data":' + data + b"}"
    return {"Content-Type": "application/cloudevents+json"}, body


def _ce_binary(data: bytes) -> tuple[dict[str, str], bytes]:
    headers = {"ce-specversion": "1.0", "ce-id": uuid.uuid4().hex, "ce-source": "t", "ce-type": "agent.execute"}
    return {**headers, "content-type": "application/json"}, data


def _plain_json(data: Any) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": "application/json"}, data


def _no_content_type(data: Any) -> tuple[dict[str, str], bytes]:
    return {}, data


DEEP_TASK_BODY = orjson.dumps(deep_task("deep-http", 200))


@pytest.mark.parametrize(
    "path, shape",
    [
        ("/", _ce_structured),
        ("/", _ce_binary),
        ("/api/v1/tasks", _plain_json),
        ("/api/v1/tasks", _no_content_type),
        ("/api/v1/policies", _plain_json),
        ("/v1/chat/completions", _plain_json),
    ],
)
@pytest.mark.parametrize("payload", [DEEP_ARRAY, DEEP_OBJECT, DEEP_TASK_BODY], ids=["array", "object", "task"])
async def test_deep_json_over_http_is_a_400_problem(
    fabric_app: RunningApp,
    path: str,
    shape: Callable[[bytes], tuple[dict[str, str], bytes]],
    payload: bytes,
) -> None:
    headers, body = shape(payload)
    response = await fabric_app.client.post(path, content=body, headers={**headers, **fabric_app.auth()})
    assert response.status_code == 400, response.text
    if path.startswith("/v1/"):  # the LLM gateway answers in OpenAI's error shape, which its callers' SDKs parse
        assert response.json()["error"]["code"] == "json_too_deep"
        return
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "json_too_deep" and problem["status"] == 400


async def test_deep_json_over_a_real_socket_gets_an_answer(tmp_path: Path, nats_url: str) -> None:
    """Through uvicorn, not only ASGI: before the fix the connection was dropped after a 500."""
    settings = make_settings(tmp_path, nats_url)
    async with running_app(settings) as app, serving(app.app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            headers, body = _ce_structured(DEEP_ARRAY)
            response = await client.post("/", content=body, headers={**headers, **app.auth()})
    assert response.status_code == 400 and response.json()["code"] == "json_too_deep"


async def test_a_crashed_fetch_loop_is_restarted_counted_and_reported(
    tmp_path: Path, nats_url: str, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop that dies anyway (a bug the per-message containment did not foresee) comes back.

    The fault is injected into the consumer's own code (its batch intake raises), the services
    stay real; the batch it dropped comes back from JetStream after the ack wait."""
    settings = make_settings(tmp_path, nats_url, nats={"ack_wait_seconds": 2.0})
    async with running_app(settings) as app:
        consumer = app.fabric.consumer
        original = consumer._take
        broken = {"on": True}

        async def take(priority: str, msgs: list[Any]) -> None:
            if broken["on"] and priority == "normal":
                raise RuntimeError("injected intake bug")
            await original(priority, msgs)

        monkeypatch.setattr(consumer, "_take", take)
        job = new_job_id("crash")
        async with collect(nc, "agent.status.completed") as completed:
            await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=app.auth())
            ready: dict[str, Any] = {}

            async def not_ready() -> bool:
                response = await app.client.get("/ready")
                ready.update(response.json())
                return response.status_code == 503

            await _until_async(not_ready)
            assert ready["failing"] == ["consumer"] and "fetch-normal" in ready["checks"]["consumer"]
            broken["on"] = False
            await until(lambda: for_job(completed, job), timeout=30)
        assert (await app.client.get("/ready")).status_code == 200
        metrics = (await app.client.get("/metrics")).text
        series = 'agent_fabric_loop_restarts_total{loop="fetch-normal"}'
        restarts = [line for line in metrics.splitlines() if line.startswith(series)]
        assert restarts and float(restarts[0].split()[-1]) >= 1


async def _until_async(predicate: Callable[[], Any], timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_a_batch_half_taken_when_the_loop_crashed_is_handed_back(
    tmp_path: Path, nats_url: str, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash comes after the message was held: it must go back to JetStream at once, not stay
    held and kept alive (in_progress) by a loop that lost track of it. The ack wait is long
    (60 s), so only the hand-back can bring the task back within the test's 30 s."""
    settings = make_settings(tmp_path, nats_url, nats={"ack_wait_seconds": 60.0})
    async with running_app(settings) as app:
        consumer = app.fabric.consumer
        original = consumer._push
        failures = {"left": 1}

        def push(delivery: Any) -> None:
            if failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("injected failure after the message was held")
            original(delivery)

        monkeypatch.setattr(consumer, "_push", push)
        job = new_job_id("halfway")
        async with collect(nc, "agent.status.completed") as completed:
            await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=app.auth())
            await until(lambda: for_job(completed, job), timeout=30)
        assert failures["left"] == 0
        await until(lambda: consumer.held == 0)


async def test_the_websocket_answers_deep_and_oversized_frames_with_an_error_frame(az_app: RunningApp) -> None:  # noqa: F811
    pod = f"pod-{uuid.uuid4().hex[:8]}"
    token = az_app.fabric.tokens.issue(role="pod_admin", subject="ws", tenant_id=pod)
    opened = (await message(az_app, {"Authorization": f"Bearer {token}"}, "open")).json()
    seen_up_to = opened["session"]["last_event_id"]
    async with serving(az_app.app) as base:
        url = f"{ws_base(base)}/ws/agent/{opened['session_id']}/?token={token}&last_event_id={seen_up_to}"
        async with connect(url, max_size=None) as ws:
            assert orjson.loads(await ws.recv())["type"] == "session"
            too_long = '{"type":"message","message":"' + "x" * 700_000 + '"}'
            for frame, says in (
                (DEEP_ARRAY.decode(), "levels deep"),
                (too_long, "characters"),
                (DEEP_OBJECT.decode(), "levels deep"),
            ):
                await ws.send(frame)
                error = (await frames_until(ws, lambda f: f.get("type") == "error"))[-1]
                assert error["code"] == "invalid_request" and says in error["detail"], error


async def test_an_admission_bug_refuses_that_task_and_no_other(
    tmp_path: Path, nats_url: str, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error while admitting one task (injected into the fabric's own admission
    step) dead-letters that task with the reason; before, it was handed back to fail again forever."""
    async with running_app(make_settings(tmp_path, nats_url)) as app:
        admission = app.fabric.consumer._admission
        original = admission.admit
        doomed = new_job_id("doomed")

        async def admit(event: Any, *args: Any) -> Any:
            if event.spec.job_id == doomed:
                raise KeyError("injected admission bug")
            return await original(event, *args)

        monkeypatch.setattr(admission, "admit", admit)
        fine = new_job_id("fine")
        async with collect(nc, names.DEADLETTER_SUBJECT) as letters, collect(nc, "agent.status.*") as results:
            await nc.jetstream().publish("agent.execute.normal", structured(task(doomed)), headers=app.auth())
            await nc.jetstream().publish("agent.execute.normal", structured(task(fine)), headers=app.auth())
            await until(lambda: finished(results, fine) and letters, timeout=30)
        letter = letters[0]["data"]
        assert letter["code"] == "admission_failed" and "KeyError" in letter["reason"]
        await until(lambda: app.fabric.consumer.held == 0)
        await _until_async(lambda: _stream_empty(nc.jetstream()), timeout=15)  # acks follow the results


async def test_a_task_handed_back_after_an_error_is_not_kept_by_its_lease(
    tmp_path: Path, nats_url: str, postgres_url: str, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claimed task whose run raised before its driver started (a progress-bus hiccup, injected
    here) goes back to JetStream. This process must stop renewing its lease, or the redelivery
    could never take it over: it would sit `running` for as long as the process lives. (A sleep
    task: an echo task settles in one write before any claim, so it has no claimed attempt to lose.)"""
    settings = make_settings(tmp_path, nats_url, database_url=postgres_url, nats={"ack_wait_seconds": 3.0})
    async with running_app(settings) as app:
        runner = app.fabric.consumer._runner
        original = runner._publish_live
        job = new_job_id("handed-back")
        failures = {"left": 1}

        async def publish_live(run: Any, row: Any) -> None:
            if run.spec.job_id == job and failures["left"]:
                failures["left"] -= 1
                raise ConnectionError("injected progress bus failure")
            await original(run, row)

        monkeypatch.setattr(runner, "_publish_live", publish_live)
        async with collect(nc, "agent.status.completed") as completed:
            await nc.jetstream().publish(
                "agent.execute.normal", structured(task(job, "sleep", {"seconds": 0.2})), headers=app.auth()
            )
            await until(lambda: for_job(completed, job), timeout=45)
        record = await app.fabric.store.get("default", job)
        assert record is not None and record.status.value == "completed" and record.attempts == 2
