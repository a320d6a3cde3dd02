"""Issue 14: a builtin task that settles at once is claimed and finished in one write
(storage/task_settle.py), and only where an ordinary claim would take it too: a live lease held
elsewhere and a cancellation asked for meanwhile still decide, as for any task."""

from __future__ import annotations

from datetime import timedelta

from nats.aio.client import Client
from sqlalchemy import insert

from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_store import _new_row, spec_hash, utcnow
from agent_fabric.tasks import TaskSpec, TaskStatus
from tests.conftest import RunningApp, new_job_id
from tests.integration.test_nats_door import collect, for_job, structured, task, until


async def test_an_echo_leaves_one_attempt_with_its_running_final_and_end_events(
    fabric_app: RunningApp, nc: Client
) -> None:
    job = new_job_id("once")
    async with collect(nc, "agent.status.completed") as completed:
        await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=fabric_app.auth())
        await until(lambda: for_job(completed, job), timeout=30)
    data = for_job(completed, job)[0]["data"]
    assert data["attempts"] == 1 and data["result"] == {"msg": "hi"} and data["usage"]["compute_seconds"] > 0
    record = await fabric_app.fabric.store.get("default", job)
    assert record is not None and record.status == TaskStatus.COMPLETED and record.attempts == 1
    assert record.started_at is not None and record.finished_at is not None and record.result == {"msg": "hi"}
    events = await fabric_app.fabric.store.events_after("default", job, None)
    assert [(e["attempt"], e["n"], e["kind"], e["status"]) for e in events] == [
        (1, 0, "state", "running"),
        (1, 1, "state", "completed"),
        (1, 2, "end", "completed"),
    ]


async def test_a_failing_builtin_task_is_recorded_failed_with_its_code(fabric_app: RunningApp, nc: Client) -> None:
    job = new_job_id("once-fail")
    body = task(job, "fail", {"code": "asked_to", "message": "as asked"})
    async with collect(nc, "agent.status.failed") as failed:
        await nc.jetstream().publish("agent.execute.normal", structured(body), headers=fabric_app.auth())
        await until(lambda: for_job(failed, job), timeout=30)
    data = for_job(failed, job)[0]["data"]
    assert data["status"] == "failed" and data["error"] == {"code": "asked_to", "message": "as asked"}
    record = await fabric_app.fabric.store.get("default", job)
    assert record is not None and (record.status, record.error_code, record.attempts) == (
        TaskStatus.FAILED,
        "asked_to",
        1,
    )
    # On Postgres the statement makes these three events itself, from the row's status and error;
    # they must be the ones the runner publishes live (SettledRun.events), as on SQLite.
    events = await fabric_app.fabric.store.events_after("default", job, None)
    assert [(e["attempt"], e["n"], e["kind"], e["status"], e["data"]) for e in events] == [
        (1, 0, "state", "running", {"attempt": 1}),
        (1, 1, "state", "failed", {"code": "asked_to", "message": "as asked"}),
        (1, 2, "end", "failed", None),
    ]


async def _running_elsewhere(app: RunningApp, job: str, *, lease: timedelta, cancel: bool) -> None:
    """The task's row as another replica's claim left it: running, attempt 1, its lease."""
    now = utcnow()
    spec = TaskSpec.model_validate({**task(job), "tenant_id": "default"})
    row = _new_row(
        spec,
        spec_hash(spec),
        "other-event",
        now,
        status=TaskStatus.RUNNING.value,
        attempts=1,
        owner="other-replica",
        lease_until=now + lease,
        started_at=now,
    )
    if cancel:
        row.update(cancel_requested_at=now, error_message="cancelled by tester")
    async with app.fabric.engine.begin() as conn:
        await conn.execute(insert(tasks).values(row))


async def test_a_task_under_a_live_lease_elsewhere_is_neither_run_nor_finished_here(
    fabric_app: RunningApp, nc: Client
) -> None:
    job = new_job_id("leased")
    await _running_elsewhere(fabric_app, job, lease=timedelta(minutes=5), cancel=False)
    duplicates = fabric_app.fabric.metrics.duplicates
    before = duplicates._value.get()
    await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=fabric_app.auth())
    await until(lambda: duplicates._value.get() > before, timeout=30)  # seen, and left to its owner
    record = await fabric_app.fabric.store.get("default", job)
    assert record is not None and (record.status, record.owner, record.attempts) == (
        TaskStatus.RUNNING,
        "other-replica",
        1,
    )
    assert record.result is None and record.finished_at is None


async def test_a_task_taken_over_after_a_cancellation_ends_cancelled_not_completed(
    fabric_app: RunningApp, nc: Client
) -> None:
    job = new_job_id("taken-cancelled")
    await _running_elsewhere(fabric_app, job, lease=timedelta(seconds=-1), cancel=True)  # its owner died
    async with collect(nc, "agent.status.cancelled") as cancelled:
        await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=fabric_app.auth())
        await until(lambda: for_job(cancelled, job), timeout=30)
    data = for_job(cancelled, job)[0]["data"]
    assert data["status"] == "cancelled" and data["attempts"] == 2
    assert data["error"]["message"] == "cancelled by tester"
