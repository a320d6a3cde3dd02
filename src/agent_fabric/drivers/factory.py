"""The one place that knows which runtimes exist and builds their drivers."""

from __future__ import annotations

from agent_fabric.admission.policy import PolicyEngine
from agent_fabric.agent_zero.fleet import Fleet
from agent_fabric.agent_zero.fleet_routing import FleetRouter
from agent_fabric.agents.lifecycle import AgentDirectory, LifecycleManager
from agent_fabric.agents.registry import AgentRegistry
from agent_fabric.drivers.a2a import A2ADriver
from agent_fabric.drivers.agent_zero import AgentZeroDriver
from agent_fabric.drivers.base import Driver
from agent_fabric.drivers.builtin import BuiltinDriver
from agent_fabric.drivers.process import ProcessDriver
from agent_fabric.errors import InvalidTask
from agent_fabric.settings import A2ASettings, Settings
from agent_fabric.tasks import TaskSpec


class Drivers:
    def __init__(self, drivers: dict[str, Driver]) -> None:
        self._drivers = drivers

    def for_task(self, spec: TaskSpec) -> Driver:
        driver = self._drivers.get(spec.agent_definition.runtime)
        if driver is None:
            raise InvalidTask(
                f"runtime {spec.agent_definition.runtime!r} is not available on this fabric "
                f"(available: {', '.join(sorted(self._drivers))})",
                code="runtime_unavailable",
                job_id=spec.job_id,
                tenant_id=spec.tenant_id,
            )
        return driver

    def add(self, driver: Driver) -> None:
        """A runtime whose parts open after the others (process, a2a: they need the agent registry)."""
        self._drivers[driver.runtime] = driver

    def get(self, runtime: str) -> Driver | None:
        return self._drivers.get(runtime)

    def check(self, spec: TaskSpec) -> None:
        self.for_task(spec).check(spec)

    async def start(self) -> None:
        for driver in self._drivers.values():
            await driver.start()

    async def aclose(self) -> None:
        for driver in self._drivers.values():
            await driver.aclose()


def build_drivers(settings: Settings, fleet: Fleet, router: FleetRouter | None = None) -> Drivers:
    """The builtin runtime, and agent-zero (it refuses tasks of tenants no instance serves; with a
    router, tasks of a POD with a started fleet run in its agents' chats)."""
    drivers: list[Driver] = [BuiltinDriver(), AgentZeroDriver(settings.agent_zero, fleet, router)]
    return Drivers({driver.runtime: driver for driver in drivers})


def build_process_driver(
    lifecycle: LifecycleManager, directory: AgentDirectory, policies: PolicyEngine, *, model_gateway: bool = False
) -> Driver:
    """The `process` runtime: tasks run in processes of registered agents (agents/lifecycle.py)."""
    return ProcessDriver(lifecycle, directory, policies, model_gateway=model_gateway)


def build_a2a_driver(registry: AgentRegistry, cfg: A2ASettings) -> Driver:
    """The `a2a` runtime: tasks run on registered agents that speak A2A elsewhere (drivers/a2a.py)."""
    return A2ADriver(registry, cfg)
