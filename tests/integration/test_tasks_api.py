"""The HTTP door on both backends: submit, read, list, idempotency, errors as problem JSON."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import RunningApp, new_job_id


def echo_task(job_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": "echo", "input": {"msg": "hi"}},
        **extra,
    }


async def wait_status(
    app: RunningApp, job_id: str, wanted: set[str], *, tenant: str | None = None, timeout: float = 15
) -> dict[str, Any]:
    params = {"tenant_id": tenant} if tenant else {}
    async with asyncio.timeout(timeout):
        while True:
            response = await app.client.get(f"/api/v1/tasks/{job_id}", headers=app.auth(), params=params)
            if response.status_code == 200 and response.json()["status"] in wanted:
                return dict(response.json())
            await asyncio.sleep(0.05)


async def test_submit_then_completed_with_echoed_input(fabric_app: RunningApp) -> None:
    job = new_job_id("hello")
    response = await fabric_app.client.post("/api/v1/tasks", json=echo_task(job), headers=fabric_app.auth())
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    task = await wait_status(fabric_app, job, {"completed"})
    assert task["result"] == {"msg": "hi"}
    assert task["attempts"] == 1 and task["tenant_id"] == "default"


async def test_same_submission_twice_is_idempotent_and_different_content_conflicts(fabric_app: RunningApp) -> None:
    job = new_job_id()
    first = await fabric_app.client.post("/api/v1/tasks", json=echo_task(job), headers=fabric_app.auth())
    again = await fabric_app.client.post("/api/v1/tasks", json=echo_task(job), headers=fabric_app.auth())
    assert first.status_code == again.status_code == 202
    assert first.json()["created"] is True and again.json()["created"] is False
    other = echo_task(job)
    other["task"]["input"] = {"msg": "different"}
    conflict = await fabric_app.client.post("/api/v1/tasks", json=other, headers=fabric_app.auth())
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/problem+json"
    assert conflict.json()["code"] == "job_exists"


async def test_invalid_tasks_get_problem_json(fabric_app: RunningApp) -> None:
    auth = fabric_app.auth()
    cases = [
        (b"not json", 422, "invalid_json"),
        (b"[1, 2]", 422, "invalid_task"),
        (b'{"agent_definition": {"runtime": "builtin"}, "task": {"type": "echo"}}', 422, "invalid_task"),
        (
            b'{"job_id": "bad id!", "agent_definition": {"runtime": "builtin"}, "task": {"type": "echo"}}',
            422,
            "invalid_task",
        ),
        (
            b'{"job_id": "x1", "agent_definition": {"runtime": "builtin"}, "task": {"type": "echo"}, "surprise": 1}',
            422,
            "invalid_task",
        ),
        (b'{"job_id": "x2", "agent_definition": {"runtime": "cobol"}, "task": {"type": "echo"}}', 422, "invalid_task"),
        (
            b'{"job_id": "x3", "agent_definition": {"runtime": "agent-zero"}, "task": {"type": "echo"}}',
            422,
            "runtime_unavailable",
        ),
        (
            b'{"job_id": "x4", "agent_definition": {"runtime": "builtin"}, "task": {"type": "dance"}}',
            422,
            "unknown_task_type",
        ),
        (
            b'{"job_id": "x5", "agent_definition": {"runtime": "builtin"}, "task": {"type": "sleep", "input": {}}}',
            422,
            "invalid_task",
        ),
    ]
    for body, status, code in cases:
        response = await fabric_app.client.post("/api/v1/tasks", content=body, headers=auth)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["code"] == code, (body, problem)
        assert problem["status"] == status and problem["detail"] and problem["type"].startswith("urn:")


async def test_oversized_body_is_413(fabric_app: RunningApp) -> None:
    big = echo_task(new_job_id())
    big["task"]["input"] = {"blob": "x" * (fabric_app.fabric.settings.max_event_bytes + 10)}
    response = await fabric_app.client.post("/api/v1/tasks", json=big, headers=fabric_app.auth())
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_auth_roles_and_tenants(fabric_app: RunningApp) -> None:
    job = new_job_id()
    no_token = await fabric_app.client.post("/api/v1/tasks", json=echo_task(job))
    assert no_token.status_code == 401 and no_token.json()["code"] == "unauthenticated"
    bad_token = await fabric_app.client.get("/api/v1/tasks", headers={"Authorization": "Bearer not.a.jwt"})
    assert bad_token.status_code == 401
    viewer = await fabric_app.client.post(
        "/api/v1/tasks", json=echo_task(job), headers=fabric_app.auth("viewer", "pod-a")
    )
    assert viewer.status_code == 403 and viewer.json()["code"] == "forbidden"

    pod_a = fabric_app.auth("pod_admin", "pod-a")
    ok = await fabric_app.client.post("/api/v1/tasks", json=echo_task(job), headers=pod_a)
    assert ok.status_code == 202 and ok.json()["tenant_id"] == "pod-a"
    await wait_status(fabric_app, job, {"completed"}, tenant="pod-a")
    other_tenant = await fabric_app.client.post(
        "/api/v1/tasks", json=echo_task(new_job_id(), tenant_id="pod-b"), headers=pod_a
    )
    assert other_tenant.status_code == 403

    pod_b = fabric_app.auth("pod_admin", "pod-b")
    assert (await fabric_app.client.get(f"/api/v1/tasks/{job}", headers=pod_b)).status_code == 404
    assert (
        await fabric_app.client.get(f"/api/v1/tasks/{job}", headers=pod_b, params={"tenant_id": "pod-a"})
    ).status_code == 403
    assert (await fabric_app.client.get(f"/api/v1/tasks/{job}", headers=pod_a)).status_code == 200
    listed = await fabric_app.client.get("/api/v1/tasks", headers=pod_b)
    assert all(item["tenant_id"] == "pod-b" for item in listed.json()["items"])
    seen_by_viewer = await fabric_app.client.get(f"/api/v1/tasks/{job}", headers=fabric_app.auth("viewer", "pod-a"))
    assert seen_by_viewer.status_code == 200


async def test_list_filters_by_status_and_tenant(fabric_app: RunningApp) -> None:
    job = new_job_id()
    await fabric_app.client.post("/api/v1/tasks", json=echo_task(job, tenant_id="pod-list"), headers=fabric_app.auth())
    await wait_status(fabric_app, job, {"completed"}, tenant="pod-list")
    listed = await fabric_app.client.get(
        "/api/v1/tasks", headers=fabric_app.auth(), params={"tenant_id": "pod-list", "status": "completed"}
    )
    assert [item["job_id"] for item in listed.json()["items"]] == [job]
    bad = await fabric_app.client.get("/api/v1/tasks", headers=fabric_app.auth(), params={"status": "sleepy"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"


async def test_failing_and_timed_out_tasks_record_their_error(fabric_app: RunningApp) -> None:
    failing = new_job_id("fail")
    body = {
        "job_id": failing,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": "fail", "input": {"code": "boom", "message": "asked to fail"}},
    }
    await fabric_app.client.post("/api/v1/tasks", json=body, headers=fabric_app.auth())
    task = await wait_status(fabric_app, failing, {"failed"})
    assert task["error"] == {"code": "boom", "message": "asked to fail"}

    slow = new_job_id("slow")
    body = {
        "job_id": slow,
        "agent_definition": {"runtime": "builtin"},
        "timeout_seconds": 0.3,
        "task": {"type": "sleep", "input": {"seconds": 5}},
    }
    await fabric_app.client.post("/api/v1/tasks", json=body, headers=fabric_app.auth())
    task = await wait_status(fabric_app, slow, {"timed_out"})
    assert task["error"]["code"] == "timeout"


async def test_unknown_route_and_job_are_problem_json(fabric_app: RunningApp) -> None:
    missing = await fabric_app.client.get("/api/v1/tasks/nope-404", headers=fabric_app.auth())
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    route = await fabric_app.client.get("/api/v1/nothing-here", headers=fabric_app.auth())
    assert route.status_code == 404 and route.headers["content-type"] == "application/problem+json"
