"""What a fleet agent is doing now, read from Agent Zero rather than remembered.

- terminated, starting: from the row; a start older than twice the Agent Zero timeout reads
  error (the replica opening its chat stopped; terminate it to free its place).
- error: the row says Agent Zero lost the chat; or the agent's instance left the fleet, is
  unhealthy (health checks and failed calls decide), or fails the probe.
- busy / idle: the chat's own log says whether its agent is working (`progress_active`), so work
  sent to it from anywhere (the Agent Zero UI included) counts, not only the fabric's; an agent
  claimed by a task (fleet_routing.py) is busy even between its messages, and `job_id` names it.
A probe that gets no answer within `probe_seconds` reads busy if the instance has calls of
the fabric's in flight (its request threads are probably all taken), else error.
A 404 for the chat means Agent Zero dropped it (expired, deleted in its UI): the agent is marked
error for good, with last_error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agent_fabric.agent_zero import fleet_rows as rows
from agent_fabric.agent_zero.client import AgentZeroError
from agent_fabric.agent_zero.fleet import Fleet
from agent_fabric.agent_zero.fleet_rows import AgentRecord
from agent_fabric.settings import AgentZeroSettings

MarkLost = Callable[[AgentRecord, str], Awaitable[None]]


async def describe(
    fleet: Fleet, records: list[AgentRecord], cfg: AgentZeroSettings, mark_lost: MarkLost
) -> list[dict[str, Any]]:
    """Views of the agents, their chats probed concurrently."""
    return list(await asyncio.gather(*(_describe(fleet, r, cfg, mark_lost) for r in records)))


async def _describe(fleet: Fleet, record: AgentRecord, cfg: AgentZeroSettings, mark_lost: MarkLost) -> dict[str, Any]:
    status, progress, error = await _read(fleet, record, cfg, mark_lost)
    job_id = record.holder(datetime.now(UTC))
    if job_id is not None and status == rows.IDLE:
        status = rows.BUSY
    return {
        "id": record.id,
        "pod_id": record.tenant_id,
        "role": record.role,
        "profile": record.profile,
        "parent_id": record.parent_id,
        "instance_url": record.instance_url,
        "context_id": record.context_id,
        "status": status,
        "job_id": job_id,
        "progress": progress,
        "last_error": error,
        "created_by": record.created_by,
        "created_at": record.created_at,
        "last_activity_at": record.last_activity_at,
        "terminated_at": record.terminated_at,
        "created_mode": record.mode,
    }


async def _read(
    fleet: Fleet, record: AgentRecord, cfg: AgentZeroSettings, mark_lost: MarkLost
) -> tuple[str, str | None, str | None]:
    if record.status == rows.STARTING and datetime.now(UTC) - record.created_at > timedelta(
        seconds=2 * cfg.timeout_seconds
    ):
        return rows.ERROR, None, "its chat was never opened (the replica opening it stopped)"
    if record.status != rows.IDLE or record.instance_url is None or record.context_id is None:
        return record.status, None, record.last_error
    instance = fleet.by_url(record.instance_url)
    if instance is None:
        return rows.ERROR, None, f"its instance {record.instance_url} is no longer in the fleet"
    if not instance.healthy:
        return rows.ERROR, None, f"its instance is down: {instance.last_error}"
    probe_seconds = cfg.probe_seconds
    try:
        async with asyncio.timeout(probe_seconds):
            progress, working = await instance.client.progress(record.context_id)
    except TimeoutError:
        waited = f"Agent Zero did not answer within {probe_seconds:g} s"
        return (rows.BUSY, None, waited) if instance.in_flight else (rows.ERROR, None, waited)
    except AgentZeroError as exc:
        if exc.code == "agent_context_not_found":
            reason = f"Agent Zero no longer has chat {record.context_id} ({exc.message})"
            await mark_lost(record, reason)
            return rows.ERROR, None, reason
        fleet.mark_failed(instance, exc)
        return rows.ERROR, None, exc.message
    return (rows.BUSY if working else rows.IDLE), progress, None
