"""One call through the gateway: route, police, reserve, forward, relay, meter, settle, audit.

The path to the first token holds one key lookup, one budget reservation (only when a budget of
the caller has limits) and the upstream request; metering, settlement and the audit entry follow
the response (for a stream: after the last chunk, before `data: [DONE]`, so a caller's next call
sees this one's spend on every replica).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from fastapi.responses import Response, StreamingResponse
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.admission.budget_math import Amounts
from agent_fabric.audit.entries import AuditEntry
from agent_fabric.audit.writer import AuditWriter
from agent_fabric.llm_gateway import estimator
from agent_fabric.llm_gateway import openai_errors as errs
from agent_fabric.llm_gateway.answering_session import SessionTokenSink, answering_sessions, charge
from agent_fabric.llm_gateway.budget_guard import BudgetGuard, BudgetRefused
from agent_fabric.llm_gateway.call_in_flight import CallInFlight
from agent_fabric.llm_gateway.keys import INSTANCE, KeyGrant
from agent_fabric.llm_gateway.metering import CallRecord, CallUsage, Meter
from agent_fabric.llm_gateway.model_policy import ModelPolicy
from agent_fabric.llm_gateway.prices import PriceTable
from agent_fabric.llm_gateway.task_stopper import TaskStopper
from agent_fabric.llm_gateway.token_relay import TokenRelay
from agent_fabric.llm_gateway.transcript import transcript
from agent_fabric.llm_gateway.upstreams import Upstreams
from agent_fabric.outbound.progress import ProgressBus
from agent_fabric.security.internal_seal import InternalSeal
from agent_fabric.settings import LlmSettings, LlmUpstream
from agent_fabric.tenants import TenantRegistry

log = logging.getLogger(__name__)

CHAT = "chat.completions"
EMBEDDINGS = "embeddings"
_PATHS = {CHAT: "/chat/completions", EMBEDDINGS: "/embeddings"}


class LlmGateway:
    def __init__(
        self,
        cfg: LlmSettings,
        upstreams: Upstreams,
        guard: BudgetGuard,
        meter: Meter,
        policy: ModelPolicy,
        stopper: TaskStopper,
        bus: ProgressBus,
        tenants: TenantRegistry,
        audit: AuditWriter,
        engine: AsyncEngine,
        nc: NatsClient,
        seal: InternalSeal,
    ) -> None:
        self._engine = engine
        self._nc = nc
        self._seal = seal  # session events between replicas are sealed
        self._cfg = cfg
        self.upstreams = upstreams
        self._guard = guard
        self._meter = meter
        self._policy = policy
        self._stopper = stopper
        self._bus = bus
        self._tenants = tenants
        self._audit = audit
        self._prices = PriceTable(cfg.prices)
        self._background: set[asyncio.Future[Any]] = set()

    # -- the endpoints --

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": up} for m, up in self.upstreams.models()],
        }

    async def call(self, grant: KeyGrant, endpoint: str, body: dict[str, Any]) -> Response:
        call = await self._admit(grant, endpoint, body)
        try:
            return await self._forward(call)
        except BaseException:
            # The caller went away (cancelled) or something broke after the reservation: settle
            # it anyway, in the background, so its room is not held.
            if not call.finished:
                self._keep(asyncio.ensure_future(self._finish(call, "aborted", 499)))
            raise

    async def _forward(self, call: CallInFlight) -> Response:
        grant, endpoint = call.grant, call.endpoint
        headers = {"Content-Type": "application/json"}
        key = await self.upstreams.key_for(call.upstream, grant.tenant_id)
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        url = call.upstream.base_url.rstrip("/") + _PATHS[endpoint]
        request = self.upstreams.client.build_request("POST", url, content=orjson.dumps(call.body), headers=headers)
        try:
            upstream = await self.upstreams.client.send(request, stream=call.stream)
        except httpx.HTTPError as exc:
            await self._finish(call, "upstream_unreachable", 502)
            raise errs.upstream_failed(f"upstream {call.upstream.name!r} unreachable: {type(exc).__name__}") from None
        if upstream.status_code >= 400:
            raw = await upstream.aread()
            await upstream.aclose()
            await self._finish(call, "upstream_error", upstream.status_code)
            raise errs.from_upstream(call.upstream.name, upstream.status_code, raw, key)
        if not call.stream:
            call.read_answer(upstream.content)
            await self._finish(call, "ok", upstream.status_code)
            return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")
        return StreamingResponse(
            self._relay(call, upstream),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- before the call --

    async def _admit(self, grant: KeyGrant, endpoint: str, body: dict[str, Any]) -> CallInFlight:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise errs.invalid_request("model is required (a string)", param="model")
        if endpoint == CHAT and not isinstance(body.get("messages"), list):
            raise errs.invalid_request("messages is required (a list)", param="messages")
        if endpoint == EMBEDDINGS and body.get("input") in (None, "", []):
            raise errs.invalid_request("input is required", param="input")
        upstream = self.upstreams.route(model)
        if upstream is None:
            raise errs.model_not_found(model)
        mode = self._tenants.mode_for(grant.tenant_id)
        await self._policy.check(grant, model, mode)
        stream = endpoint == CHAT and body.get("stream") is True
        if stream:  # the usage of a stream comes in its last chunk only when asked for
            body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        if endpoint == CHAT:
            prompt = estimator.chat_prompt_tokens(body)
            cap = estimator.max_completion_tokens(body, self._cfg.default_max_tokens)
        else:
            prompt, cap = estimator.embedding_input_tokens(body), 0
        estimate = Amounts(tokens=prompt + cap, cost_usd=self._prices.cost(model, prompt, cap))
        call_id = uuid.uuid4().hex
        try:
            reservation = await self._guard.reserve(grant, call_id, estimate)
        except BudgetRefused as refused:
            await self._refused(grant, call_id, endpoint, model, upstream, stream, refused, mode)
            raise errs.budget_exceeded(refused.message) from None
        return CallInFlight(call_id, grant, endpoint, model, body, upstream, reservation, prompt, stream)

    async def _refused(
        self,
        grant: KeyGrant,
        call_id: str,
        endpoint: str,
        model: str,
        upstream: LlmUpstream,
        stream: bool,
        refused: BudgetRefused,
        mode: str,
    ) -> None:
        record = CallRecord(
            call_id,
            endpoint,
            model,
            upstream.name,
            stream,
            CallUsage(0, 0, False),
            0.0,
            0.0,
            None,
            "refused_budget",
            402,
        )
        self._audit_call(grant, record, mode, {"refusal": refused.message})
        await self._guard.settle(None, Amounts(), self._meter.row(grant, record))
        if grant.job_id is not None:
            # The task fails with budget_exceeded, wherever it runs (LIVE only reaches here).
            await self._stopper.fail(grant.tenant_id, grant.job_id, "budget_exceeded", refused.message)

    # -- a stream, relayed --

    async def _relay(self, call: CallInFlight, upstream: httpx.Response) -> AsyncIterator[bytes]:
        relay = self._relay_for(call)
        finished = False
        try:
            event: list[bytes] = []
            async for line in upstream.aiter_lines():
                if line.startswith("data:"):
                    data = line[5:].strip()
                    if data == "[DONE]":
                        finished = True
                        await self._finish(call, "ok", upstream.status_code)
                    else:
                        call.read_chunk(data, relay)
                event.append(line.encode() + b"\n")
                if not line:  # an SSE event ends with a blank line: pass it on whole, in one write
                    yield b"".join(event)
                    event.clear()
            if event:
                yield b"".join(event)
            if not finished:  # the upstream closed without [DONE]: count what came
                finished = True
                await self._finish(call, "ok_unterminated", upstream.status_code)
        finally:
            if relay is not None:
                self._keep(relay.close())
            await upstream.aclose()
            if not finished:  # the caller went away mid-stream (or the upstream broke)
                self._keep(asyncio.ensure_future(self._finish(call, "stream_aborted", 499)))

    def _relay_for(self, call: CallInFlight) -> TokenRelay | None:
        """Where the call's tokens go: its task's progress stream, or its Agent Zero session."""
        grant, capacity = call.grant, self._cfg.relay_buffer_events
        if grant.job_id is not None:
            envelope = {"job_id": grant.job_id, "tenant_id": grant.tenant_id, "status": None}
            return TokenRelay(self._bus.publish, envelope, call.id, call.model, capacity)
        if grant.kind == INSTANCE and grant.instance_url is not None:
            sink = SessionTokenSink(self._engine, self._nc, grant, self._seal)
            return TokenRelay(sink.publish, {"tenant_id": grant.tenant_id}, call.id, call.model, capacity)
        return None

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for calls' last bookkeeping (at shutdown)."""
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- after the call --

    async def _finish(self, call: CallInFlight, outcome: str, status: int) -> None:
        if call.finished:
            return
        call.finished = True
        usage = call.usage_for(outcome)
        cost = self._prices.cost(call.model, usage.prompt_tokens, usage.completion_tokens)
        record = CallRecord(
            call.id,
            call.endpoint,
            call.model,
            call.upstream.name,
            call.stream,
            usage,
            cost,
            round((time.perf_counter() - call.started) * 1000, 3),
            None if call.ttft_ms is None else round(call.ttft_ms, 3),
            outcome,
            status,
        )
        try:
            used = Amounts(tokens=usage.total_tokens, cost_usd=cost)
            await self._guard.settle(call.reservation, used, self._meter.row(call.grant, record))
        except Exception as exc:  # the reservation stays until the ledger is reached again; say so
            log.error("llm call not settled", extra={"call_id": call.id, "error": str(exc)[:300]})
        sessions: list[str] = []
        if call.grant.kind == INSTANCE and outcome.startswith("ok"):
            try:
                sessions = await answering_sessions(self._engine, call.grant)
                await charge(self._engine, sessions, cost)
            except Exception as exc:
                log.warning("session not charged", extra={"call_id": call.id, "error": str(exc)[:300]})
        mode = self._tenants.mode_for(call.grant.tenant_id)
        recorded: dict[str, Any] = {}
        if self._tenants.config_for(call.grant.tenant_id).llm.record_prompts:
            recorded = transcript(call.body, "".join(call.completion_text))
        if len(sessions) > 1:
            recorded = {**recorded, "shared_by_sessions": sessions}
        self._audit_call(call.grant, record, mode, recorded, sessions[0] if len(sessions) == 1 else None)

    def _audit_call(
        self,
        grant: KeyGrant,
        record: CallRecord,
        mode: str,
        extra: dict[str, Any] | None,
        session_id: str | None = None,
    ) -> None:
        self._audit.record(
            AuditEntry(
                "llm.call",
                grant.actor,
                grant.tenant_id,
                mode,
                request={"job_id": grant.job_id, "agent": grant.agent_label, "key": grant.kind, **(extra or {})},
                response=record.summary(),
                cost_usd=record.cost_usd,
                session_id=session_id,
            )
        )
