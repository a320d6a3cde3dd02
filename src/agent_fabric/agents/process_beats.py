"""Every replica's agent processes, seen from any replica.

Each replica runs its own processes of an agent and hears only their heartbeats. So that
`GET /api/v1/agents/{id}/health` on any replica shows all of them, each replica writes the live
state of its processes (last heartbeat, state, current job, tasks done) onto their run rows every
RECORD_SECONDS, in one statement. A replica that died stops writing: its processes show `stale`
once their record is older than STALE_SECONDS (they are gone with it; their tasks' leases lapse
and another replica resumes them).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from agent_fabric.agents.lifecycle import LifecycleManager
from agent_fabric.periodic import Periodic

RECORD_SECONDS = 5.0
STALE_SECONDS = 3 * RECORD_SECONDS


class ProcessBeats:
    def __init__(self, lifecycle: LifecycleManager, owner: str) -> None:
        self._lifecycle = lifecycle
        self._owner = owner

    def periodic(self) -> Periodic:
        return Periodic("agent-process-beats", RECORD_SECONDS, self.record)

    async def record(self) -> None:
        """Write this replica's live processes onto their run rows."""
        now_wall, now_mono = time.time(), time.monotonic()
        beats: list[dict[str, Any]] = []
        for pool in list(self._lifecycle.pools.values()):
            for proc in list(pool.processes.values()):
                run_id = self._lifecycle.history.run_id(proc.name)
                if run_id is None:
                    continue
                heard = proc.last_heartbeat
                beats.append(
                    {
                        "run_id": run_id,
                        # The monotonic clock says how long ago; the row needs a wall-clock time.
                        "heartbeat_at": datetime.fromtimestamp(now_wall - (now_mono - heard), UTC) if heard else None,
                        "state": proc.state.value,
                        "job_id": proc.job_id,
                        "tasks_done": proc.tasks_done,
                    }
                )
        await self._lifecycle.runs.beat(beats)

    async def replicas(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's live processes on every replica, grouped by replica: this replica's from
        memory (current to the moment), the others' as last recorded."""
        here = await self._lifecycle.get_health(agent_id)
        by_owner: dict[str, list[dict[str, Any]]] = {}
        now = datetime.now(UTC)
        for row in await self._lifecycle.runs.live(agent_id):
            if row["owner"] == self._owner:
                continue
            heard = row["heartbeat_at"]
            # Stale: its replica stopped writing (died, or cannot reach the database).
            written = row["recorded_at"] or row["started_at"]
            by_owner.setdefault(row["owner"], []).append(
                {
                    "name": row["process"],
                    "pid": row["pid"],
                    "state": row["state"] or "starting",
                    "job_id": row["job_id"],
                    "tasks_done": row["tasks_done"],
                    "last_heartbeat_at": _iso(row["heartbeat_at"]),
                    "seconds_since_heartbeat": round((now - heard).total_seconds(), 3) if heard else None,
                    "recorded_at": _iso(row["recorded_at"]),
                    "stale": (now - written).total_seconds() > STALE_SECONDS,
                }
            )
        replicas = []
        if here is not None and here["processes"]:
            replicas.append({"replica": self._owner, "this_replica": True, "processes": here["processes"]})
        replicas += [
            {"replica": owner, "this_replica": False, "processes": procs} for owner, procs in sorted(by_owner.items())
        ]
        return replicas


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None
