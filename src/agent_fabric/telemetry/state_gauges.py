"""Gauges read at scrape time: what the database and this process's connections say right now.

Sessions, fleet agents and unfinished tasks live in the database, shared by every replica, so
they are counted there (cheap grouped counts on indexed status columns) when Prometheus scrapes,
at most once per `MIN_INTERVAL_SECONDS` per process. A failing probe never fails the scrape: its
gauge says 0 (dependency down) and the other series are still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from agent_fabric.storage.engine import ping
from agent_fabric.storage.tables import agent_sessions, fleet_agents, tasks
from agent_fabric.storage.task_store import utcnow
from agent_fabric.tasks import TaskStatus
from agent_fabric.telemetry.logging import redact

if TYPE_CHECKING:
    from agent_fabric.fabric import Fabric

log = logging.getLogger(__name__)

MIN_INTERVAL_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 2.0
OPEN_STATUSES = tuple(s.value for s in TaskStatus if not s.is_terminal)
_OVERDUE_SCAN_LIMIT = 10_000  # running tasks looked at per scrape (far above replicas x slots)


class StateGauges:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._at = 0.0

    async def refresh(self, fabric: Fabric) -> None:
        """Bring the scrape-time gauges up to date (skipped if another scrape just did)."""
        async with self._lock:
            if time.monotonic() - self._at < MIN_INTERVAL_SECONDS:
                return
            self._at = time.monotonic()
            ops = fabric.metrics.ops
            up = await _probe_dependencies(fabric)
            for name, ok in up.items():
                ops.dependency_up.labels(name).set(1 if ok else 0)
            ops.agent_zero_instance_up.clear()
            for instance in fabric.fleet.instances:
                ops.agent_zero_instance_up.labels(redact(instance.url)).set(1 if instance.healthy else 0)
            ops.audit_spool_bytes.set(_spool_bytes(fabric.settings.state_dir / "audit-spool"))
            if up["database"]:
                try:
                    await _count_database_state(fabric)
                except Exception as exc:
                    log.warning("could not count database state for metrics", extra={"error": str(exc)[:300]})


async def _probe_dependencies(fabric: Fabric) -> dict[str, bool]:
    async def nats() -> None:
        if not fabric.nc.is_connected:
            raise ConnectionError("not connected")
        await fabric.nc.flush(timeout=int(PROBE_TIMEOUT_SECONDS))

    probes = {"database": ping(fabric.engine), "nats": nats(), "progress": fabric.bus.ping()}
    results: dict[str, bool] = {}
    for name, probe in probes.items():
        try:
            await asyncio.wait_for(probe, timeout=PROBE_TIMEOUT_SECONDS)
            results[name] = True
        except Exception:
            results[name] = False
    return results


async def _count_database_state(fabric: Fabric) -> None:
    default_timeout = fabric.settings.worker.default_timeout_seconds
    now = utcnow()
    async with fabric.engine.connect() as conn:
        sessions = (
            await conn.execute(select(agent_sessions.c.status, func.count()).group_by(agent_sessions.c.status))
        ).all()
        agents = (await conn.execute(select(fleet_agents.c.status, func.count()).group_by(fleet_agents.c.status))).all()
        open_tasks = (
            await conn.execute(
                select(tasks.c.tenant_id, tasks.c.priority, tasks.c.status, func.count())
                .where(tasks.c.status.in_(OPEN_STATUSES))
                .group_by(tasks.c.tenant_id, tasks.c.priority, tasks.c.status)
            )
        ).all()
        # Only tasks running longer than a second can be overdue; their specs hold the timeout.
        running = (
            await conn.execute(
                select(tasks.c.started_at, tasks.c.spec)
                .where(tasks.c.status == TaskStatus.RUNNING.value, tasks.c.started_at < now - timedelta(seconds=1))
                .limit(_OVERDUE_SCAN_LIMIT)
            )
        ).all()
    overdue = sum(1 for started, spec in running if _overdue(started, spec, default_timeout, now))
    # Every await is behind us: clear and set with no scrape rendering in between.
    ops = fabric.metrics.ops
    ops.sessions.clear()
    for status, n in sessions:
        ops.sessions.labels(status).set(n)
    ops.fleet_agents.clear()
    for status, n in agents:
        ops.fleet_agents.labels(status).set(n)
    ops.tasks_open.clear()
    for tenant_id, priority, status, n in open_tasks:
        ops.tasks_open.labels(tenant_id, priority, status).set(n)
    ops.tasks_overdue.set(overdue)


def _overdue(started: Any, spec: Any, default_timeout: float, now: Any) -> bool:
    if started is None:
        return False
    if started.tzinfo is None:  # SQLite hands back naive UTC
        started = started.replace(tzinfo=now.tzinfo)
    timeout = (spec or {}).get("timeout_seconds") if isinstance(spec, dict) else None
    limit = float(timeout or default_timeout)
    return bool((now - started).total_seconds() > limit)


def _spool_bytes(spool: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for path in spool.glob("*.jsonl"):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
    return total
