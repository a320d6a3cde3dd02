"""The operators' console as a person uses it, in headless Chromium against a real serve:
sign in with an API key, submit a task and watch it complete live, approve a parked task, see a
pod_admin refused another POD's data, and a screenshot of every page."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from tests.browser.conftest import shot
from tests.e2e.test_serve import token, wait_for
from tests.support.process_agents import package, register_over_http
from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PAGES = ("fleet", "agents", "queues", "tasks", "approvals", "sessions", "budgets", "audit")


async def sign_in(page: Any, fabric: ServeProcess, credential: str) -> None:
    await page.goto(f"{fabric.url}/console")
    await page.fill("#credential", credential)
    await page.click("#sign-in button[type=submit]")
    await page.wait_for_selector("#nav:not([hidden])")


def api_key(fabric: ServeProcess, admin: str, role: str, tenant: str | None = None) -> str:
    body: dict[str, Any] = {"name": f"console-{uuid.uuid4().hex[:6]}", "role": role}
    if tenant:
        body["tenant_id"] = tenant
    made = httpx.post(f"{fabric.url}/api/v1/auth/keys", json=body, headers={"Authorization": f"Bearer {admin}"})
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


async def test_sign_in_submit_a_task_and_watch_it_complete_live(page: Any, console_fabric: ServeProcess) -> None:
    fabric = console_fabric
    admin = token(fabric.env)
    await sign_in(page, fabric, api_key(fabric, admin, "admin"))  # an API key, exchanged for a JWT
    assert "admin" in (await page.text_content("#who") or "")
    await page.click("#nav a[href='#/tasks']")
    await page.wait_for_selector("#submit-task")
    job = f"live-{uuid.uuid4().hex[:6]}"
    await page.fill("#submit-task input[name=job_id]", job)
    await page.select_option("#submit-task select[name=runtime]", "builtin")
    await page.fill("#submit-task input[name=type]", "sleep")
    await page.fill("#submit-task input[name=input]", '{"seconds": 2}')
    await page.click("#submit-task button[type=submit]")
    # The task page follows the SSE stream: running shows up, then completed, without a reload.
    await page.wait_for_selector(f"h1:has-text('{job}')")
    await page.wait_for_selector("#events li[data-kind=state] .status.running", timeout=30_000)
    await page.wait_for_selector("#task-status .status.completed", timeout=30_000)
    await page.wait_for_selector("#events li[data-kind=progress]")
    # Once it ended, the page shows the result without a reload by the user.
    await page.wait_for_selector("pre:has-text('\"slept\":2')")
    await shot(page, "task-detail")
    # Search finds it by status, agent and type, and not under another type.
    await page.goto(f"{fabric.url}/console/#/tasks?status=completed&agent=builtin&type=sleep")
    await page.wait_for_selector(f"table a:has-text('{job}')")
    await shot(page, "tasks")
    await page.goto(f"{fabric.url}/console/#/tasks?type=echo")
    await page.wait_for_selector("#task-search")
    await page.wait_for_load_state("networkidle")
    assert await page.locator(f"table a:has-text('{job}')").count() == 0
    # A budget with a limit: the budgets page draws its burn-down meter.
    budget = httpx.put(
        f"{fabric.url}/api/v1/budgets/tenant?tenant_id=default",
        json={"max_compute_seconds": 10},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert budget.status_code == 200, budget.text
    # Every page renders without an error banner (and is photographed for review).
    for name in PAGES:
        await page.goto(f"{fabric.url}/console/#/{name}")
        await page.wait_for_selector(f"#nav a.active[href='#/{name}']")
        await page.wait_for_selector("main h1")
        await page.wait_for_load_state("networkidle")
        assert await page.is_hidden("#error"), f"{name}: {await page.text_content('#error')}"
        await shot(page, name)
    await page.goto(f"{fabric.url}/console/#/budgets")
    await page.wait_for_selector("tr:has-text('tenant') .meter")
    await page.goto(f"{fabric.url}/console/#/fleet")
    await page.wait_for_selector(".card .status.up")  # the POD status: the stand-in Agent Zero answers


async def test_approve_a_parked_task(page: Any, console_fabric: ServeProcess) -> None:
    fabric = console_fabric
    requester = token(fabric.env)
    job = f"parked-{uuid.uuid4().hex[:6]}"
    body = {
        "job_id": job,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": "spend", "input": {"tokens": 5}},
    }
    submitted = httpx.post(f"{fabric.url}/api/v1/tasks", json=body, headers={"Authorization": f"Bearer {requester}"})
    assert submitted.status_code == 202 and submitted.json()["status"] == "awaiting_approval", submitted.text
    # Four eyes: someone other than the requester (the CLI's subject) decides.
    operator = _token_as(fabric, "operator", "admin")
    await sign_in(page, fabric, operator)
    await page.click("#nav a[href='#/approvals']")
    row = page.locator("tr", has_text=job)
    await row.wait_for()
    await shot(page, "approvals-waiting")
    await row.locator("button:has-text('Approve')").click()
    await page.wait_for_selector(f"tr:has-text('{job}')", state="detached")
    assert wait_for(fabric.url, requester, job, {"completed", "failed"})["status"] == "completed"
    await page.goto(f"{fabric.url}/console/#/task/default/{job}")
    await page.wait_for_selector("#task-status .status.completed")
    await page.goto(f"{fabric.url}/console/#/audit?action=approval.")
    await page.wait_for_selector("td:has-text('approval.')")
    await shot(page, "audit-approvals")


async def test_a_pod_admin_is_refused_another_pods_data(page: Any, console_fabric: ServeProcess) -> None:
    fabric = console_fabric
    admin = token(fabric.env)
    mine, theirs = f"pod-a-{uuid.uuid4().hex[:5]}", f"pod-b-{uuid.uuid4().hex[:5]}"
    for tenant in (mine, theirs):
        body = {
            "job_id": f"in-{tenant}",
            "tenant_id": tenant,
            "agent_definition": {"runtime": "builtin"},
            "task": {"type": "echo", "input": {}},
        }
        assert (
            httpx.post(
                f"{fabric.url}/api/v1/tasks", json=body, headers={"Authorization": f"Bearer {admin}"}
            ).status_code
            == 202
        )
    await sign_in(page, fabric, api_key(fabric, admin, "pod_admin", mine))
    assert mine in (await page.text_content("#who") or "")
    await page.goto(f"{fabric.url}/console/#/tasks")
    await page.wait_for_selector(f"table a:has-text('in-{mine}')")
    assert await page.locator(f"text=in-{theirs}").count() == 0
    # Asking for the other POD: the API refuses, and the console says so.
    await page.goto(f"{fabric.url}/console/#/tasks?tenant_id={theirs}")
    await page.wait_for_selector("#error:not([hidden])")
    assert re.search(rf"403 .*cannot act in tenant '{theirs}'", await page.text_content("#error") or "")
    await page.fill("#pod", theirs)
    await page.dispatch_event("#pod", "change")
    await page.goto(f"{fabric.url}/console/#/queues")
    await page.wait_for_selector("#error:not([hidden])")
    assert "403" in (await page.text_content("#error") or "")
    await shot(page, "pod-admin-refused")
    await page.goto(f"{fabric.url}/console/#/task/{theirs}/in-{theirs}")
    await page.wait_for_selector("#error:not([hidden])")
    assert await page.locator("#events").count() == 0


def _token_as(fabric: ServeProcess, subject: str, role: str) -> str:
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "agent_fabric", "token", "--role", role, "--subject", subject],
        env={**os.environ, **fabric.env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


async def test_an_agents_processes_are_shown_and_stopped_from_the_console(
    page: Any, console_fabric: ServeProcess
) -> None:
    """A process agent dropped into the agents directory, registered and started: the agents page
    lists it, its page shows its live processes with their heartbeats, and Stop stops them."""
    fabric = console_fabric
    admin = token(fabric.env)
    path = package(fabric.state_dir / "agents", "echo")
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=fabric.url, timeout=30) as client:
        assert (await client.post("/api/v1/agents/discover", headers=headers)).status_code == 200
        exchanged = await client.post(
            "/api/v1/auth/token", json={"api_key": api_key(fabric, admin, "pod_admin", "default")}
        )
        operator = {"Authorization": f"Bearer {exchanged.json()['access_token']}"}
        agent_id = await register_over_http(client, "", path, "default", operator)
        started = await client.post(f"/api/v1/agents/{agent_id}/start", headers=headers)
        assert started.status_code == 202, started.text
    await sign_in(page, fabric, api_key(fabric, admin, "admin"))
    await page.click("#nav a[href='#/agents']")
    await page.click(f"table a:has-text('{agent_id}')")
    await page.wait_for_selector("#agent-status .status.running")
    row = page.locator("tr", has_text=f"{agent_id}/")
    await row.locator(".status.idle").first.wait_for(timeout=60_000)
    assert "(this one)" in (await row.first.text_content() or "")
    await shot(page, "agent-detail")
    await page.click("button:has-text('Stop')")
    await page.wait_for_selector("#agent-status .status.stopped", timeout=60_000)
    await page.wait_for_selector("text=No process of this agent is running.")
    assert await page.is_hidden("#error"), await page.text_content("#error")
