"""GET /api/v2/agent/health: are the Agent Zero instances serving a POD up, and which version.

Each instance that may serve the POD now (Fleet.candidates: its own in its mode's set, else the
shared ones) is asked for /api/health; the answer also updates the fleet's routing, exactly like
the periodic health check. Reports are kept per POD for `health_cache_seconds` (seed 000 req. 8.5:
30 s) in this process, and only while the POD's set of instances is the one it was made for (an
instance registered or removed meanwhile makes a new report); `refresh` skips the cache (the
request is rate-limited like any other). Concurrent misses for one POD share one round of pings.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from agent_fabric.agent_zero.fleet import Fleet, Instance


class PodHealth:
    def __init__(self, fleet: Fleet, cache_seconds: float, probe_seconds: float) -> None:
        self._fleet = fleet
        self._ttl = cache_seconds
        self._within = probe_seconds
        self._reports: dict[str, tuple[float, list[Instance], dict[str, Any]]] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def report(self, tenant_id: str, *, refresh: bool = False) -> dict[str, Any]:
        async with self._locks[tenant_id]:
            instances = self._fleet.candidates(tenant_id)
            kept = self._reports.get(tenant_id)
            if (
                kept is not None
                and not refresh
                and time.monotonic() - kept[0] < self._ttl
                and _same(kept[1], instances)
            ):
                return {**kept[2], "cached": True}
            await asyncio.gather(*(self._fleet.check(i, within=self._within) for i in instances))
            body = _body(tenant_id, instances)
            self._reports[tenant_id] = (time.monotonic(), instances, body)
            return {**body, "cached": False}


def _same(before: list[Instance], now: list[Instance]) -> bool:
    return len(before) == len(now) and all(a is b for a, b in zip(before, now, strict=True))


def _body(tenant_id: str, instances: list[Instance]) -> dict[str, Any]:
    views = [
        {
            "id": i.instance_id,
            "url": i.url,
            "source": "api" if i.instance_id else "environment",
            "mode_set": i.mode_set,
            "status": "up" if i.healthy else "down",
            "version": i.version,
            "error": i.last_error,
            "checked_at": i.checked_at,
        }
        for i in instances
    ]
    body: dict[str, Any] = {
        "pod_id": tenant_id,
        "status": "up" if any(v["status"] == "up" for v in views) else "down",
        "instances": views,
        "checked_at": datetime.now(UTC),
    }
    if not views:
        body["detail"] = "no Agent Zero instance serves this POD"
    return body
