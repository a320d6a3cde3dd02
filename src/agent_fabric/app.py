"""create_app(settings): the HTTP API and the JetStream consumer in one process, one lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from agent_fabric import __version__
from agent_fabric.console.routes import install_console
from agent_fabric.fabric import open_fabric
from agent_fabric.inbound.api import (
    agent_decisions,
    agent_fleet,
    agent_instances,
    agent_processes,
    agent_sessions,
    agent_tasks,
    agent_v2,
    agent_ws,
    agents,
    approvals,
    audit,
    auth,
    budgets,
    cloudevents,
    config,
    health,
    policies,
    queues,
    tasks,
)
from agent_fabric.inbound.api.hardening import install_hardening
from agent_fabric.inbound.api.problems import install_problem_handlers
from agent_fabric.llm_gateway import admin_api as llm_admin_api
from agent_fabric.llm_gateway import router as llm_router
from agent_fabric.settings import Settings
from agent_fabric.telemetry.http_telemetry import RequestTelemetry
from agent_fabric.telemetry.state_gauges import StateGauges


def create_app(settings: Settings, *, started: Callable[[], None] | None = None) -> FastAPI:
    """`started`: called once the fabric is open (`serve` settles its heap there, heap.py)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_fabric(settings) as fabric:
            app.state.fabric = fabric
            if started is not None:
                started()
            yield

    app = FastAPI(
        title="agent-fabric",
        version=__version__,
        summary="Runs AI-agent tasks from CloudEvents over HTTP and NATS JetStream, durably.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.state_gauges = StateGauges()
    install_problem_handlers(app)
    install_hardening(app, settings)
    app.include_router(health.router)
    app.include_router(cloudevents.router)
    app.include_router(tasks.router)
    for router in (
        auth.router,
        policies.router,
        approvals.router,
        budgets.router,
        audit.router,
        config.router,
        agent_processes.router,  # before agents.router: its health/metrics/logs extend the registry's
        agents.router,
        agent_v2.router,
        agent_tasks.router,
        agent_decisions.router,
        agent_fleet.router,
        agent_instances.router,
        agent_sessions.router,
        agent_ws.router,
        llm_admin_api.router,
        llm_router.router,
    ):
        app.include_router(router)
    app.include_router(queues.router)
    install_console(app, settings.console_enabled)
    # Outermost: request ids and request metrics cover every answer, refusals included.
    app.add_middleware(RequestTelemetry)
    return app
