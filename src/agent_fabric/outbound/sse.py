"""A job's events as Server-Sent Events: history from the event log, then live, resumable.

Subscribe first, then read history, then relay live events newer than the last one sent: an
event published between the two steps is in one or the other, and duplicates are skipped by id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from agent_fabric.outbound.progress import ProgressBus
from agent_fabric.storage.column_bounds import MAX_INT
from agent_fabric.storage.task_store import TaskStore
from agent_fabric.storage.timestamps import aware

# Progress kinds that are live only (not in the event log): the LLM gateway's token relay.
LIVE_ONLY_KINDS = frozenset({"token", "tool_call"})

HEARTBEAT_SECONDS = 15.0


def parse_event_id(value: str | None) -> tuple[int, int] | None:
    """`<attempt>-<n>` as sent in `id:`; None (start from the beginning) if absent or malformed."""
    if not value:
        return None
    attempt, _, n = value.strip().partition("-")
    if not (attempt.isdigit() and n.isdigit()):
        return None
    if int(attempt) > MAX_INT or int(n) > MAX_INT:  # no real event has it; never send it to the database
        return None
    return int(attempt), int(n)


def _frame(event: dict[str, Any]) -> bytes:
    return f"id: {event['id']}\nevent: {event['kind']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"


def _live_frame(event: dict[str, Any]) -> bytes:
    # No `id:` line: a reconnect resumes from the last logged event, not from a token.
    return f"event: {event['kind']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"


def _from_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"{row['attempt']}-{row['n']}",
        "job_id": row["job_id"],
        "tenant_id": row["tenant_id"],
        "kind": row["kind"],
        "status": row["status"],
        "data": row["data"],
        # SQLite hands the time back without its zone: UTC, as it was written, "Z" as live events.
        "time": aware(row["created_at"]).isoformat().replace("+00:00", "Z"),
    }


async def job_event_stream(
    store: TaskStore, bus: ProgressBus, tenant_id: str, job_id: str, last_event_id: str | None
) -> AsyncIterator[bytes]:
    cursor = parse_event_id(last_event_id)
    async with bus.subscribe(tenant_id, job_id) as live:
        for row in await store.events_after(tenant_id, job_id, cursor):
            event = _from_row(row)
            cursor = (row["attempt"], row["n"])
            yield _frame(event)
            if event["kind"] == "end":
                return
        yield b": live\n\n"
        while True:
            try:
                event = await asyncio.wait_for(live.get(), timeout=HEARTBEAT_SECONDS)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if event["kind"] in LIVE_ONLY_KINDS:  # LLM tokens: relayed as they come, never replayed
                yield _live_frame(event)
                continue
            position = parse_event_id(event["id"])
            if position is None or (cursor is not None and position <= cursor):
                continue
            cursor = position
            yield _frame(event)
            if event["kind"] == "end":
                return
