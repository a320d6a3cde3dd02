"""OpenTelemetry traces follow a task from the HTTP or NATS door to its result event (FR-TEL-2)."""

from __future__ import annotations

import secrets
from pathlib import Path

import orjson
from nats.aio.client import Client

from agent_fabric.settings import TelemetrySettings
from tests.conftest import make_settings, new_job_id, running_app
from tests.support.flows import collect, for_job, structured, task, task_status, until
from tests.support.otlp_receiver import running_otlp_receiver

SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER = 4, 5
STATUS_ERROR = 2


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def test_http_submission_continues_the_callers_trace(tmp_path: Path, nats_url: str) -> None:
    header, trace_id, caller_span = traceparent()
    job = new_job_id("traced")
    with running_otlp_receiver() as receiver:
        settings = make_settings(tmp_path, nats_url, telemetry=TelemetrySettings(otlp_endpoint=receiver.url))
        async with running_app(settings) as app:
            response = await app.client.post(
                "/api/v1/tasks", headers={**app.auth(), "traceparent": header}, json=task(job)
            )
            assert response.status_code == 202, response.text
            await task_status(app, job, {"completed"}, tenant="default")
        # Shutting the fabric down exports what its batch processor held.
        (submit,) = [s for s in receiver.named("submit") if s.trace_id == trace_id]
        (run,) = [s for s in receiver.named("run builtin") if s.trace_id == trace_id]
    assert submit.parent_span_id == caller_span and submit.kind == SPAN_KIND_PRODUCER
    assert run.parent_span_id == submit.span_id and run.kind == SPAN_KIND_CONSUMER
    assert run.attributes["agent_fabric.job_id"] == job and run.attributes["agent_fabric.status"] == "completed"
    assert run.attributes["messaging.destination.name"] == "agent.execute.normal"
    assert submit.service == "agent-fabric"


async def test_nats_publisher_trace_reaches_the_result_event(tmp_path: Path, nats_url: str, nc: Client) -> None:
    header, trace_id, caller_span = traceparent()
    job = new_job_id("traced-nats")
    failing = new_job_id("traced-fail")
    with running_otlp_receiver() as receiver:
        settings = make_settings(tmp_path, nats_url, telemetry=TelemetrySettings(otlp_endpoint=receiver.url))
        async with running_app(settings) as app:
            async with collect(nc, "agent.status.>") as results:
                event = orjson.loads(structured(task(job)))
                event["traceparent"] = header  # the CloudEvents Distributed Tracing extension
                await nc.jetstream().publish("agent.execute.high", orjson.dumps(event), headers=app.auth())
                failed = orjson.loads(structured(task(failing, "fail", {"code": "boom", "message": "as asked"})))
                failed["traceparent"] = header
                await nc.jetstream().publish("agent.execute.normal", orjson.dumps(failed), headers=app.auth())
                await until(lambda: any(e["type"] == "agent.status.completed" for e in for_job(results, job)))
                await until(lambda: any(e["type"] == "agent.status.failed" for e in for_job(results, failing)))
        runs = {s.attributes["agent_fabric.job_id"]: s for s in receiver.named("run builtin") if s.trace_id == trace_id}
    completed = next(e for e in for_job(results, job) if e["type"] == "agent.status.completed")
    assert completed["traceparent"].split("-")[1] == trace_id
    assert completed["traceparent"].split("-")[2] == runs[job].span_id
    assert runs[job].parent_span_id == caller_span
    assert runs[job].attributes["messaging.destination.name"] == "agent.execute.high"
    assert runs[failing].status_code == STATUS_ERROR and runs[failing].attributes["agent_fabric.status"] == "failed"


async def test_tracing_is_off_without_an_endpoint(tmp_path: Path, nats_url: str) -> None:
    job = new_job_id("untraced")
    async with running_app(make_settings(tmp_path, nats_url)) as app:
        assert not app.app.state.fabric.tracing.enabled
        response = await app.client.post(
            "/api/v1/tasks", headers={**app.auth(), "traceparent": traceparent()[0]}, json=task(job)
        )
        assert response.status_code == 202
        record = await task_status(app, job, {"completed"}, tenant="default")
    assert record["status"] == "completed"
