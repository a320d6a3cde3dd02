"""The running fabric: every long-lived resource, opened in order and closed in reverse."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.admission.approvals import ApprovalDesk
from agent_fabric.admission.budget import BudgetManager
from agent_fabric.admission.checks import Admission
from agent_fabric.admission.decisions import DecisionLog
from agent_fabric.admission.dependencies import Dependencies
from agent_fabric.admission.policy import PolicyEngine
from agent_fabric.agent_zero.fleet import Fleet
from agent_fabric.agent_zero.fleet_manager import FleetManager, open_fleet_manager
from agent_fabric.agent_zero.session_events import SessionEvents
from agent_fabric.agent_zero.sessions import SessionManager
from agent_fabric.agents.process_runtime import ProcessRuntime, open_process_runtime
from agent_fabric.agents.services import AgentDeps, AgentServices, open_agents
from agent_fabric.audit.store import AuditStore
from agent_fabric.audit.writer import AuditWriter
from agent_fabric.drivers.factory import Drivers, build_a2a_driver, build_drivers
from agent_fabric.embedded_nats import EmbeddedNats
from agent_fabric.inbound.control import ControlChannel
from agent_fabric.inbound.nats_consumer import TaskConsumer
from agent_fabric.inbound.nats_credentials import NatsCredentials
from agent_fabric.inbound.rejections import Rejector
from agent_fabric.inbound.submission import Submitter
from agent_fabric.jetstream import ensure_topology
from agent_fabric.llm_gateway.budget_guard import BudgetGuard
from agent_fabric.llm_gateway.gateway import LlmGateway
from agent_fabric.llm_gateway.key_cache import GrantCache
from agent_fabric.llm_gateway.keys import GatewayKeys
from agent_fabric.llm_gateway.metering import Meter
from agent_fabric.llm_gateway.model_policy import ModelPolicy
from agent_fabric.llm_gateway.stale_calls import StaleCallSweeper
from agent_fabric.llm_gateway.task_access import TaskModelAccess
from agent_fabric.llm_gateway.task_stopper import TaskStopper
from agent_fabric.llm_gateway.upstreams import Upstreams
from agent_fabric.nats_options import connect_options
from agent_fabric.outbound.progress import ProgressBus, open_progress_bus
from agent_fabric.outbound.result_sweep import ResultSweeper
from agent_fabric.outbound.results import ResultPublisher
from agent_fabric.scheduling.cancellation import Canceller
from agent_fabric.scheduling.runner import TaskRunner
from agent_fabric.scheduling.scheduler import AgentScheduler
from agent_fabric.security.access_state import AccessState
from agent_fabric.security.credentials import CredentialService
from agent_fabric.security.internal_seal import internal_seal_for
from agent_fabric.security.jwks import JwksKeys
from agent_fabric.security.outbound_urls import OutboundGuard
from agent_fabric.security.rate_limit import RateLimiter
from agent_fabric.security.sealing import sealer_for
from agent_fabric.security.tokens import TokenService
from agent_fabric.settings import Settings, nats_servers
from agent_fabric.storage.batcher import WriteBatcher
from agent_fabric.storage.critical_line import CriticalLine
from agent_fabric.storage.dead_letters import DeadLetterStore
from agent_fabric.storage.documents import DocumentStore
from agent_fabric.storage.engine import create_engine, migrate_async
from agent_fabric.storage.outbox import OutboxRelay
from agent_fabric.storage.queue_store import QueueLimits, QueueStore
from agent_fabric.storage.task_store import TaskStore
from agent_fabric.telemetry.logging import redact
from agent_fabric.telemetry.metrics import FabricMetrics, agent_zero_observer
from agent_fabric.telemetry.tracing import Tracing
from agent_fabric.tenants import TenantRegistry

log = logging.getLogger(__name__)


@dataclass
class Fabric:
    settings: Settings
    owner: str
    nc: NatsClient
    js: JetStreamContext
    engine: AsyncEngine
    store: TaskStore
    queue_store: QueueStore
    bus: ProgressBus
    drivers: Drivers
    submitter: Submitter
    scheduler: AgentScheduler
    consumer: TaskConsumer
    tokens: TokenService
    access: AccessState
    credentials: CredentialService
    rate_limiter: RateLimiter
    metrics: FabricMetrics
    governance: Governance
    fleet: Fleet
    tracing: Tracing
    fleet_manager: FleetManager
    sessions: SessionManager
    canceller: Canceller
    agents: AgentServices
    llm: LlmGateway
    llm_keys: GatewayKeys
    task_llm: TaskModelAccess
    processes: ProcessRuntime


@dataclass
class Governance:
    """Policies, approvals, budgets, tenant configuration and the audit trail of one process."""

    policies: PolicyEngine
    approvals: ApprovalDesk
    budgets: BudgetManager
    tenants: TenantRegistry
    docs: DocumentStore
    audit: AuditWriter
    audit_store: AuditStore
    control: ControlChannel
    relay: OutboxRelay
    decisions: DecisionLog
    dependencies: Dependencies


def process_identity() -> str:
    """Names this process as a lease owner: readable in the database, unique per start."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


@contextlib.asynccontextmanager
async def open_fabric(settings: Settings) -> AsyncIterator[Fabric]:
    async with contextlib.AsyncExitStack() as stack:
        metrics = FabricMetrics()
        tracing = Tracing(settings.telemetry)
        stack.callback(tracing.shutdown)  # last out: spans of the shutdown itself are exported
        nats_url = settings.nats.url
        embedded: EmbeddedNats | None = None
        if nats_url is None:
            embedded = EmbeddedNats(settings.state_dir / "nats", port=settings.nats.embedded_port)
            nats_url = await embedded.start()
            stack.push_async_callback(embedded.stop)

        nc = await nats.connect(
            nats_servers(nats_url),  # a cluster's servers: the client fails over between them
            **connect_options(settings.nats, embedded),
            name="agent-fabric",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            error_cb=_nats_error,
            disconnected_cb=_nats_disconnected,
        )
        stack.push_async_callback(_close_nats, nc)
        js = nc.jetstream(timeout=10)
        await ensure_topology(js, settings.nats, settings.max_event_bytes)

        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        if settings.database.auto_migrate:
            await migrate_async(settings)
        batcher = WriteBatcher(
            engine,
            linger_ms=settings.database.batch_linger_ms,
            max_items=settings.database.batch_max,
            flushers=1 if engine.dialect.name == "sqlite" else settings.database.flushers,
            metrics=metrics.ops,
        )
        batcher.start()
        stack.push_async_callback(batcher.shutdown)
        governance = await _open_governance(stack, settings, engine, batcher, nc, js, metrics)
        # Critical claims and outcomes: no linger, and no waiting behind the shared writer's batches.
        urgent = _side_writer(
            stack, engine, batcher, linger_ms=0, max_items=settings.database.batch_max, flushers=2, name="urgent"
        )
        line = None
        if engine.dialect.name == "postgresql":
            line = CriticalLine(engine, metrics=metrics.ops)
            stack.push_async_callback(line.close)
        store = TaskStore(
            engine,
            batcher,
            urgent=urgent,
            line=line,
            finish_hooks=[
                governance.budgets.settle_finished,
                governance.decisions.task_finished,
                governance.dependencies.on_tasks_finished,
            ],
        )
        # Queue records get their own writers: their transaction may take the per-tenant queue lock,
        # which must not be held across the claims and outcomes batched in the main writer.
        queue_store = QueueStore(
            engine,
            QueueLimits(settings.scheduler.max_queued_per_tenant, settings.scheduler.max_queued_per_agent),
            linger_ms=settings.database.batch_linger_ms,
            max_items=settings.database.batch_max,
            metrics=metrics.ops,
        )
        queue_store.start()
        stack.push_async_callback(queue_store.shutdown)

        seal = internal_seal_for(settings)
        access = AccessState(engine, nc, seal)
        await access.start()
        stack.push_async_callback(access.aclose)
        jwks = None
        if settings.jwt.jwks_url:
            jwks = JwksKeys(settings.jwt.jwks_url)
            await jwks.load()
        tokens = TokenService(settings, access, jwks)
        credentials = CredentialService(engine, tokens, access, settings.jwt, governance.tenants.mode_for)

        bus = await open_progress_bus(settings.redis_url, nc)
        stack.push_async_callback(bus.aclose)
        fleet = Fleet(settings.agent_zero, governance.tenants.mode_for, observe=agent_zero_observer(metrics))
        stack.push_async_callback(fleet.aclose)
        await fleet.start()
        fleet_manager = await open_fleet_manager(
            settings.agent_zero,
            engine,
            fleet,
            governance.tenants,
            governance.control,
            sealer_for(settings),
            OutboundGuard(settings.outbound),
        )
        sessions = SessionManager(
            engine,
            SessionEvents(engine, nc, seal),
            fleet,
            governance.tenants,
            governance.budgets,
            governance.audit,
            settings.agent_zero,
        )
        sessions.start()
        stack.push_async_callback(sessions.aclose)
        drivers = build_drivers(settings, fleet, fleet_manager.router)
        stack.push_async_callback(drivers.aclose)
        await drivers.start()
        results = ResultPublisher(nc, js)
        result_sweep = ResultSweeper(engine, results, metrics).periodic()
        result_sweep.start()
        stack.push_async_callback(result_sweep.stop)
        owner = process_identity()
        key_cache = GrantCache(nc, settings.llm.key_cache_seconds, seal)
        await key_cache.start()
        stack.push_async_callback(key_cache.shutdown)
        llm_keys = GatewayKeys(engine, settings.llm.key_grace_seconds, key_cache)
        meter = Meter(engine, metrics)
        task_llm = TaskModelAccess(
            llm_keys,
            meter,
            settings.llm.public_base_url or f"http://127.0.0.1:{settings.http_port}/v1",
            governance.budgets,
            engine,
        )
        runner = TaskRunner(
            settings,
            store,
            drivers,
            results,
            bus,
            metrics,
            owner,
            tracing.tracer,
            llm=task_llm,
        )
        llm = await _open_llm_gateway(stack, settings, engine, nc, runner, meter, bus, governance, metrics)
        rejector = Rejector(store, DeadLetterStore(batcher), results, metrics)
        agents = await open_agents(
            stack,
            settings,
            AgentDeps(
                engine,
                governance.docs,
                governance.tenants.mode_for,
                tokens,
                sealer_for(settings),
                embedded,
                governance.control,
            ),
        )
        drivers.add(build_a2a_driver(agents.registry, settings.a2a))
        processes = await open_process_runtime(
            stack,
            settings,
            engine,
            nc,
            js,
            agents,
            governance.policies,
            governance.audit,
            governance.tenants,
            drivers,
            owner,
            metrics,
        )
        admission = Admission(
            drivers,
            governance.policies,
            governance.approvals,
            governance.budgets,
            governance.dependencies,
            known_agents=agents.directory.check,
        )
        door = NatsCredentials(
            settings.nats_door,
            tokens,
            credentials,
            access.is_revoked,
            access.permissions_for,
            seal,
            governance.tenants.mode_for,
        )
        consumer = TaskConsumer(settings, js, runner, admission, rejector, store, queue_store, metrics, door)
        canceller = Canceller(
            engine,
            nc,
            store,
            runner,
            governance.approvals,
            governance.tenants,
            seal,
            on_running_cancel=llm_keys.revoke_task,
        )
        await canceller.start()
        stack.push_async_callback(canceller.shutdown)
        await consumer.start()
        stack.push_async_callback(runner.drain_background)
        stack.push_async_callback(consumer.shutdown, settings.shutdown_grace_seconds)

        log.info(
            "fabric ready",
            extra={
                "owner": owner,
                "nats": redact(nats_url),
                "database": settings.database_url.split(":", 1)[0],
                "progress": "redis" if settings.redis_url else "nats",
            },
        )
        submitter = Submitter(
            js,
            store,
            queue_store,
            admission,
            tracing.tracer,
            settings.scheduler.queue_full_http_status,
            seal=seal,
        )
        yield Fabric(
            settings=settings,
            owner=owner,
            nc=nc,
            js=js,
            engine=engine,
            store=store,
            queue_store=queue_store,
            bus=bus,
            drivers=drivers,
            submitter=submitter,
            scheduler=AgentScheduler(submitter, store, canceller, agents.directory.runtime_of),
            consumer=consumer,
            tokens=tokens,
            access=access,
            credentials=credentials,
            rate_limiter=RateLimiter(settings.http.rate_limit_per_second, settings.http.rate_limit_burst),
            metrics=metrics,
            governance=governance,
            fleet=fleet,
            tracing=tracing,
            fleet_manager=fleet_manager,
            sessions=sessions,
            canceller=canceller,
            agents=agents,
            llm=llm,
            llm_keys=llm_keys,
            task_llm=task_llm,
            processes=processes,
        )
        log.info("fabric shutting down", extra={"grace_s": settings.shutdown_grace_seconds})


def _side_writer(
    stack: contextlib.AsyncExitStack,
    engine: AsyncEngine,
    shared: WriteBatcher,
    *,
    linger_ms: float,
    max_items: int,
    flushers: int = 1,
    name: str = "side",
) -> WriteBatcher:
    """A writer beside the shared one on Postgres. SQLite allows one writer at a time (and budget
    rows are read, then written, never beside another write), so there it is the shared one."""
    if engine.dialect.name == "sqlite":
        return shared
    writer = WriteBatcher(
        engine, linger_ms=linger_ms, max_items=max_items, flushers=flushers, metrics=shared.metrics, name=name
    )
    writer.start()
    stack.push_async_callback(writer.shutdown)
    return writer


async def _open_governance(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    engine: AsyncEngine,
    batcher: WriteBatcher,
    nc: NatsClient,
    js: JetStreamContext,
    metrics: FabricMetrics,
) -> Governance:
    """Audit writer, outbox relay, policies, approvals, budgets, tenant configuration, and the
    control channel that keeps them in step across replicas. Each loop stops after the consumer."""
    audit = AuditWriter(engine, settings.audit, settings.state_dir / "audit-spool", metrics)
    audit.start()
    stack.push_async_callback(audit.shutdown)
    relay = OutboxRelay(engine, js, settings.approval.sweep_seconds, seal=internal_seal_for(settings))
    relay.start()
    stack.push_async_callback(relay.shutdown)
    # Budget transactions lock budget rows; on a writer of their own they never hold task writes.
    budget_batcher = _side_writer(
        stack, engine, batcher, linger_ms=settings.database.batch_linger_ms, max_items=512, name="budget"
    )
    docs = DocumentStore(engine)
    tenants = TenantRegistry(docs, settings.mode)
    control = ControlChannel(nc, settings.policy.reload_seconds, internal_seal_for(settings))
    budgets = BudgetManager(engine, budget_batcher, settings.budget, tenants, audit, metrics, control.announce)
    decisions = DecisionLog(engine, tenants)
    dependencies = Dependencies(engine, settings.scheduler)
    approvals = ApprovalDesk(
        engine,
        settings.approval,
        tenants,
        metrics,
        [budgets.settle_finished, dependencies.on_tasks_finished],
        listeners=[decisions],
    )
    policies = PolicyEngine(engine, docs, settings.policy, tenants, audit, metrics, approvals, control.announce)
    control.register("config", tenants.reload)
    control.register("budgets", budgets.reload)
    control.register("policies", policies.reload)
    await control.start()
    stack.push_async_callback(control.shutdown)
    approvals.start()
    stack.push_async_callback(approvals.shutdown)
    budgets.start()
    stack.push_async_callback(budgets.shutdown)
    dependencies.start()
    stack.push_async_callback(dependencies.shutdown)
    return Governance(
        policies,
        approvals,
        budgets,
        tenants,
        docs,
        audit,
        AuditStore(engine),
        control,
        relay,
        decisions=decisions,
        dependencies=dependencies,
    )


async def _open_llm_gateway(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    engine: AsyncEngine,
    nc: NatsClient,
    runner: TaskRunner,
    meter: Meter,
    bus: ProgressBus,
    governance: Governance,
    metrics: FabricMetrics,
) -> LlmGateway:
    """The OpenAI-compatible gateway (llm_gateway/): upstream client, per-call budgets, the
    cross-replica task stop of a LIVE refusal. Its bookkeeping drains before the writers stop."""
    stopper = TaskStopper(nc, runner, internal_seal_for(settings))
    await stopper.start()
    stack.push_async_callback(stopper.shutdown)
    upstreams = Upstreams(settings.llm, engine, sealer_for(settings))
    stack.push_async_callback(upstreams.aclose)
    llm = LlmGateway(
        settings.llm,
        upstreams,
        BudgetGuard(governance.budgets, governance.tenants, governance.audit, metrics),
        meter,
        ModelPolicy(governance.policies, settings.llm.approval_wait_seconds),
        stopper,
        bus,
        governance.tenants,
        governance.audit,
        engine,
        nc,
        internal_seal_for(settings),
    )
    stack.push_async_callback(llm.drain)
    sweeper = StaleCallSweeper(engine, settings.llm.upstream_timeout_seconds)
    sweeper.start()
    stack.push_async_callback(sweeper.shutdown)
    return llm


async def _close_nats(nc: NatsClient) -> None:
    # The consumer has stopped and every ack was written; flush them out and close. (drain() would
    # wait out the pull subscriptions' expired fetch requests, up to its 30 s timeout.)
    with contextlib.suppress(Exception):
        await nc.flush(timeout=5)
    with contextlib.suppress(Exception):
        await nc.close()


async def _nats_error(exc: Exception) -> None:
    log.warning("nats error", extra={"error": str(exc)})


async def _nats_disconnected() -> None:
    log.warning("nats disconnected (reconnects unless the fabric is stopping)")
