"""POST /: the same task CloudEvent over HTTP, binary and structured mode, with ?wait."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from tests.conftest import RunningApp, new_job_id


def event(data: dict[str, Any]) -> CloudEvent:
    return CloudEvent(
        attributes={
            "type": "agent.execute",
            "source": "test/http",
            "id": uuid.uuid4().hex,
            "datacontenttype": "application/json",
        },
        data=data,
    )


def echo(job: str, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": "echo", "input": {"n": 7}},
        **extra,
    }


async def test_structured_mode_with_wait_returns_the_result_event(fabric_app: RunningApp) -> None:
    job = new_job_id("ce-s")
    message = to_structured_event(event(echo(job)))
    response = await fabric_app.client.post(
        "/?wait=10", content=message.body, headers={**message.headers, **fabric_app.auth()}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/cloudevents+json")
    result = response.json()
    assert result["type"] == "agent.status.completed"
    assert result["data"]["job_id"] == job and result["data"]["result"] == {"n": 7}


async def test_binary_mode_queues_and_completes(fabric_app: RunningApp) -> None:
    job = new_job_id("ce-b")
    message = to_binary_event(event(echo(job)))
    response = await fabric_app.client.post("/", content=message.body, headers={**message.headers, **fabric_app.auth()})
    assert response.status_code == 202 and response.json()["status"] == "queued"
    waited = await fabric_app.client.post(
        "/?wait=10", content=message.body, headers={**message.headers, **fabric_app.auth()}
    )
    assert waited.status_code == 200 and waited.json()["data"]["status"] == "completed"


async def test_wait_for_a_failure_returns_the_failed_event(fabric_app: RunningApp) -> None:
    job = new_job_id("ce-f")
    data = {
        "job_id": job,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": "fail", "input": {"code": "x_failed", "message": "no"}},
    }
    message = to_structured_event(event(data))
    response = await fabric_app.client.post(
        "/?wait=10", content=message.body, headers={**message.headers, **fabric_app.auth()}
    )
    assert response.json()["type"] == "agent.status.failed"
    assert response.json()["data"]["error"] == {"code": "x_failed", "message": "no"}


async def test_wait_that_runs_out_answers_202(fabric_app: RunningApp) -> None:
    job = new_job_id("ce-w")
    data = {
        "job_id": job,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": "sleep", "input": {"seconds": 2}},
    }
    message = to_structured_event(event(data))
    response = await fabric_app.client.post(
        "/?wait=0.3", content=message.body, headers={**message.headers, **fabric_app.auth()}
    )
    assert response.status_code == 202 and response.json()["status"] in {"queued", "running"}


async def test_not_a_cloudevent_is_400_and_wrong_type_is_422(fabric_app: RunningApp) -> None:
    auth = fabric_app.auth()
    garbage = await fabric_app.client.post("/", content=b"{{{", headers=auth)
    assert garbage.status_code == 400 and garbage.json()["code"] == "invalid_event"
    missing = await fabric_app.client.post("/", content=orjson.dumps({"data": {"x": 1}}), headers=auth)
    assert missing.status_code == 400
    wrong_type = to_structured_event(
        CloudEvent(attributes={"type": "com.example", "source": "t", "id": "1"}, data=echo(new_job_id()))
    )
    response = await fabric_app.client.post("/", content=wrong_type.body, headers={**wrong_type.headers, **auth})
    assert response.status_code == 422 and response.json()["code"] == "invalid_event"
    no_auth = await fabric_app.client.post("/", content=to_structured_event(event(echo(new_job_id()))).body)
    assert no_auth.status_code == 401


async def test_pod_admin_event_defaults_to_its_tenant(fabric_app: RunningApp) -> None:
    job = new_job_id("ce-t")
    message = to_structured_event(event(echo(job)))
    response = await fabric_app.client.post(
        "/?wait=10", content=message.body, headers={**message.headers, **fabric_app.auth("pod_admin", "pod-9")}
    )
    assert response.json()["data"]["tenant_id"] == "pod-9"
