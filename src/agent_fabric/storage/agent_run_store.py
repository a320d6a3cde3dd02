"""Session history of agent processes (FR-LIFE-5): one row per run, started and ended."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.storage.agent_process_tables import agent_process_runs as runs
from agent_fabric.storage.timestamps import aware_or_none


def _at(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


class AgentRunStore:
    def __init__(self, engine: AsyncEngine, owner: str) -> None:
        self._engine = engine
        self._owner = owner

    async def started(self, agent_id: str, tenant_id: str, process: str, pid: int | None, at: float) -> str:
        run_id = uuid.uuid4().hex
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(runs).values(
                    run_id=run_id,
                    agent_id=agent_id,
                    tenant_id=tenant_id,
                    process=process[:160],
                    owner=self._owner[:64],
                    pid=pid,
                    started_at=_at(at),
                    tasks_done=0,
                )
            )
        return run_id

    async def ended(
        self,
        run_id: str,
        *,
        pid: int | None = None,
        ready_at: float | None,
        exit_code: int | None,
        outcome: str,
        reason: str | None,
        tasks_done: int,
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(
                    **({"pid": pid} if pid is not None else {}),  # the agent's own pid, once it said
                    ready_at=_at(ready_at),
                    ended_at=datetime.now(UTC),
                    exit_code=exit_code,
                    outcome=outcome,
                    reason=reason[:2000] if reason else None,
                    tasks_done=tasks_done,
                )
            )

    async def beat(self, beats: list[dict[str, Any]]) -> None:
        """This replica's live processes as they are now: one statement for all of them. Each
        item: run_id, heartbeat_at (None before the first), state, job_id, tasks_done."""
        if beats:
            now = datetime.now(UTC)
            async with self._engine.begin() as conn:
                await conn.execute(
                    _BEAT, [{"b_recorded_at": now, **{f"b_{k}": v for k, v in b.items()}} for b in beats]
                )

    async def live(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's runs that have not ended, on every replica, oldest first."""
        query = (
            select(runs)
            .where(runs.c.agent_id == agent_id, runs.c.ended_at.is_(None))
            .order_by(runs.c.owner, runs.c.started_at)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            {
                **dict(row),
                "started_at": aware_or_none(row["started_at"]),
                "heartbeat_at": aware_or_none(row["heartbeat_at"]),
                "recorded_at": aware_or_none(row["recorded_at"]),
            }
            for row in rows
        ]

    async def history(self, agent_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The agent's most recent process runs, newest first."""
        query = select(runs).where(runs.c.agent_id == agent_id).order_by(runs.c.started_at.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        items = []
        for row in rows:
            item = dict(row)
            for key in ("started_at", "ready_at", "ended_at"):
                moment = aware_or_none(item[key])
                item[key] = moment.isoformat().replace("+00:00", "Z") if moment else None
            items.append(item)
        return items

    async def prune(self, older_than_days: float) -> int:
        """Drop runs that ended more than `older_than_days` ago (any replica may do it: idempotent)."""
        cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(runs).where(runs.c.ended_at < cutoff))
        return int(result.rowcount or 0)


_BEAT = (
    update(runs)
    .where(runs.c.run_id == bindparam("b_run_id"), runs.c.ended_at.is_(None))
    .values(
        recorded_at=bindparam("b_recorded_at"),
        heartbeat_at=bindparam("b_heartbeat_at"),
        state=bindparam("b_state"),
        job_id=bindparam("b_job_id"),
        tasks_done=bindparam("b_tasks_done"),
    )
)
