"""What the console stands on: its page and assets (with a strict CSP, off by a setting), the
queue view and the task search, on SQLite and on Postgres. The browser tests drive the pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent_fabric.console.routes import CONSOLE_CSP
from agent_fabric.settings import WorkerSettings
from tests.conftest import RunningApp, make_settings, new_job_id, running_app
from tests.support.flows import new_pod, task, task_status


async def test_console_page_and_assets_are_served_with_a_strict_csp(fabric_app: RunningApp) -> None:
    page = await fabric_app.client.get("/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONSOLE_CSP
    assert "script-src 'self'" in CONSOLE_CSP and "unsafe-inline" not in CONSOLE_CSP
    assert '<script src="/console/static/console.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
    script = await fabric_app.client.get("/console/static/console.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "innerHTML" not in script.text  # data is written with textContent only
    assert (await fabric_app.client.get("/console/static/console.css")).status_code == 200
    assert (await fabric_app.client.get("/console/static/secrets.txt")).status_code == 404
    assert (await fabric_app.client.get("/console", follow_redirects=False)).status_code == 307


async def test_the_console_can_be_turned_off(tmp_path: Path, nats_url: str) -> None:
    async with running_app(make_settings(tmp_path, nats_url, console_enabled=False)) as app:
        assert (await app.client.get("/console/")).status_code == 404
        assert (await app.client.get("/console/static/console.js")).status_code == 404


async def test_task_search_by_agent_type_and_time(fabric_app: RunningApp) -> None:
    pod = new_pod()
    admin = fabric_app.auth()
    echo, fail = new_job_id("echo"), new_job_id("fail")
    for body in (task(echo, tenant_id=pod), task(fail, "fail", tenant_id=pod)):
        assert (await fabric_app.client.post("/api/v1/tasks", headers=admin, json=body)).status_code == 202
    for job in (echo, fail):
        await task_status(fabric_app, job, {"completed", "failed"}, tenant=pod)

    async def found(**params: str) -> set[str]:
        listed = await fabric_app.client.get("/api/v1/tasks", headers=admin, params={"tenant_id": pod, **params})
        assert listed.status_code == 200, listed.text
        return {t["job_id"] for t in listed.json()["items"]}

    assert await found() == {echo, fail}
    assert await found(type="echo") == {echo}
    assert await found(type="fail", status="failed") == {fail}
    assert await found(agent="builtin") == {echo, fail}
    assert await found(agent="agent-zero") == set()
    now = datetime.now(UTC)
    assert await found(since=(now - timedelta(minutes=5)).isoformat()) == {echo, fail}
    assert await found(since=(now + timedelta(minutes=5)).isoformat()) == set()
    assert await found(until=(now - timedelta(minutes=5)).isoformat()) == set()
    bad = await fabric_app.client.get("/api/v1/tasks", headers=admin, params={"since": "yesterday"})
    assert bad.status_code == 422


async def test_queues_by_tenant_priority_and_status_scoped_like_the_api(
    tmp_path: Path, nats_url: str, postgres_url: str
) -> None:
    settings = make_settings(tmp_path, nats_url, database_url=postgres_url, worker=WorkerSettings(concurrency=1))
    async with running_app(settings) as app:
        mine, theirs = new_pod(), new_pod()
        admin = app.auth()
        blocker = task(new_job_id("block"), "sleep", {"seconds": 30}, tenant_id=mine)
        assert (await app.client.post("/api/v1/tasks", headers=admin, json=blocker)).status_code == 202
        await task_status(app, blocker["job_id"], {"running"}, tenant=mine)
        for tenant, priority in ((mine, "high"), (mine, "high"), (theirs, "low")):
            body = task(new_job_id("q"), tenant_id=tenant, priority=priority)
            assert (await app.client.post("/api/v1/tasks", headers=admin, json=body)).status_code == 202
        everything = (await app.client.get("/api/v1/queues", headers=admin)).json()
        counts = {(i["tenant_id"], i["priority"], i["status"]): i["count"] for i in everything["items"]}
        assert counts[(mine, "normal", "running")] == 1
        assert counts[(mine, "high", "queued")] == 2 and counts[(theirs, "low", "queued")] == 1
        assert {c["priority"] for c in everything["consumers"]} == {"critical", "high", "normal", "low"}
        pod_admin = app.auth("pod_admin", mine)
        own = (await app.client.get("/api/v1/queues", headers=pod_admin)).json()
        assert {i["tenant_id"] for i in own["items"]} == {mine}
        assert "consumers" not in own  # shared by every tenant: admins only
        refused = await app.client.get("/api/v1/queues", headers=pod_admin, params={"tenant_id": theirs})
        assert refused.status_code == 403
        assert (await app.client.get("/api/v1/queues")).status_code == 401
        await app.client.post(f"/api/v1/tasks/{blocker['job_id']}/cancel?tenant_id={mine}", headers=admin)
