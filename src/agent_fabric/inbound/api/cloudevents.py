"""POST /: a task CloudEvent over HTTP, binary or structured mode, optionally waiting for its result."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from agent_fabric.events.envelope import STRUCTURED_CONTENT_TYPE, parse_task_event
from agent_fabric.inbound.api.body import read_limited
from agent_fabric.inbound.api.deps import FabricDep, Submitter
from agent_fabric.inbound.api.tasks import submit_response
from agent_fabric.outbound.results import result_event
from agent_fabric.security.deps import tenant_scope

router = APIRouter(tags=["cloudevents"])

MAX_WAIT_SECONDS = 300.0


@router.post("/", status_code=202, summary="Submit a task CloudEvent (binary or structured mode)")
async def receive_event(
    request: Request,
    fabric: FabricDep,
    principal: Submitter,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS, description="Seconds to wait for the result event.")] = 0,
) -> Response:
    body = await read_limited(request, fabric.settings.max_event_bytes)
    event = parse_task_event(
        dict(request.headers),
        body,
        max_bytes=fabric.settings.max_event_bytes,
        default_tenant=principal.tenant_id,
        max_depth=fabric.settings.max_json_depth,
    )
    spec = event.spec
    tenant_scope(principal, spec.tenant_id)
    # The event's own trace context (Distributed Tracing extension) first, else the HTTP request's.
    trace = event.trace or request.headers
    if wait <= 0:
        return await submit_response(fabric, spec, principal, event_id=event.id, trace=trace)
    async with fabric.bus.subscribe(spec.tenant_id, spec.job_id) as live:
        accepted = await submit_response(fabric, spec, principal, event_id=event.id, trace=trace)
        record = await fabric.store.get(spec.tenant_id, spec.job_id)
        if record is None or not record.status.is_terminal:
            try:
                async with asyncio.timeout(wait):
                    await _until_end(live)
            except TimeoutError:
                return accepted
            record = await fabric.store.get(spec.tenant_id, spec.job_id)
    assert record is not None
    _, payload, _ = result_event(record)
    return Response(payload, media_type=STRUCTURED_CONTENT_TYPE, status_code=200)


async def _until_end(live: asyncio.Queue[dict[str, Any]]) -> None:
    event = await live.get()
    while event["kind"] != "end":
        event = await live.get()
