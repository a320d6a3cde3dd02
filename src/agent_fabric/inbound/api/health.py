"""Liveness, readiness and metrics: unauthenticated, for kubelets and Prometheus."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from agent_fabric.inbound.api.deps import FabricDep
from agent_fabric.storage.engine import ping

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive and serving HTTP."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(fabric: FabricDep) -> JSONResponse:
    """NATS, the database and (when configured) Redis answer; 503 names what does not."""
    checks = {
        "nats": _check_nats(fabric),
        "database": ping(fabric.engine),
        "progress": fabric.bus.ping(),
        "consumer": _check_consumer(fabric),
    }
    results: dict[str, str] = {}
    for name, probe in checks.items():
        try:
            await asyncio.wait_for(probe, timeout=CHECK_TIMEOUT_SECONDS)
            results[name] = "ok"
        except Exception as exc:
            detail = f" ({exc})" if isinstance(exc, LoopsDown) else ""  # other errors may carry hosts/URLs
            results[name] = f"failing: {type(exc).__name__}{detail}"
    failing = [name for name, state in results.items() if state != "ok"]
    status = 503 if failing else 200
    return JSONResponse(
        {"status": "ready" if not failing else "not_ready", "checks": results, "failing": failing}, status_code=status
    )


async def _check_nats(fabric: FabricDep) -> None:
    if not fabric.nc.is_connected:
        raise ConnectionError("not connected")
    await fabric.nc.flush(timeout=int(CHECK_TIMEOUT_SECONDS))


class LoopsDown(Exception):
    """Consumer loops that crashed and wait to be restarted: their classes fetch nothing."""


async def _check_consumer(fabric: FabricDep) -> None:
    dead = fabric.consumer.dead_loops()
    if dead:
        raise LoopsDown(", ".join(dead))


@router.get("/metrics")
async def metrics(fabric: FabricDep, request: Request) -> Response:
    """Prometheus text; database-wide gauges are refreshed first (at most every 5 s)."""
    await request.app.state.state_gauges.refresh(fabric)
    return Response(fabric.metrics.render(), media_type=CONTENT_TYPE_LATEST)
