"""Registered agents as the process runtime runs them: the registry's record and effective
configuration, the package's own runtime hints, and the fabric-wide defaults, in one ProcessAgent.

Where each knob comes from:
- effective configuration (agents/config.py; per agent, API-editable): heartbeat_interval_seconds,
  max_concurrent_tasks (= processes at once per replica), restart_policy (`never`: the first
  failure leaves the agent failed), env (added to the scrubbed environment), settings (given to
  the agent as AGENT_FABRIC_AGENT_CONFIG);
- the package's .env.discovery (optional keys): AGENT_MIN_IDLE, AGENT_DRAIN_TIMEOUT,
  AGENT_ISOLATION, AGENT_MEMORY_MB, AGENT_CPU_CORES, AGENT_MAX_PIDS, AGENT_NETWORK_EGRESS;
- settings (AGENT_FABRIC_PROCESS_*): everything else, and the defaults of the keys above.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from agent_fabric.agents.config import AgentConfigs
from agent_fabric.agents.nats_credentials import NatsCredentials
from agent_fabric.agents.process_spec import IsolationConfig, ProcessAgent, RuntimeConfig, requested_isolation
from agent_fabric.agents.registry import AgentRecord, AgentRegistry
from agent_fabric.agents.states import AgentStatus
from agent_fabric.errors import Conflict, InvalidRequest
from agent_fabric.settings import ProcessAgentSettings

CACHE_SECONDS = 1.0
RUNNABLE = frozenset({AgentStatus.REGISTERED, AgentStatus.RUNNING, AgentStatus.FAILED, AgentStatus.STOPPED})


class RegistryDirectory:
    def __init__(
        self,
        registry: AgentRegistry,
        configs: AgentConfigs,
        cfg: ProcessAgentSettings,
        nats: NatsCredentials | None = None,
    ) -> None:
        self.registry = registry
        self._configs = configs
        self._cfg = cfg
        self._nats = nats
        self._cache: dict[str, tuple[float, ProcessAgent | None]] = {}

    async def process_agent(self, agent_id: str) -> ProcessAgent | None:
        """The agent if it is registered (bound to a tenant) with a package the fabric can start.
        Answers are reused for CACHE_SECONDS: two database reads per task would cost more than the
        task itself on a busy agent, and a status change is seen that much later at most."""
        cached = self._cache.get(agent_id)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        record = await self.registry.get(agent_id)
        agent = None
        runnable = record is not None and record.tenant_id is not None and record.runtime == "process"
        if record is not None and runnable and record.package_path is not None and record.status in RUNNABLE:
            agent = await self.build(record)
        self._cache[agent_id] = (time.monotonic(), agent)
        return agent

    def forget(self, agent_id: str) -> None:
        """Read the agent afresh next time (its status or configuration just changed here)."""
        self._cache.pop(agent_id, None)

    async def build(self, record: AgentRecord) -> ProcessAgent:
        effective = (await self._configs.effective(record)).values
        hints = record.manifest
        cfg = self._cfg
        restarts = 1 if effective.get("restart_policy") == "never" else cfg.max_restarts
        try:
            runtime = RuntimeConfig(
                heartbeat_interval=float(effective.get("heartbeat_interval_seconds", 30)),
                missed_heartbeats=cfg.missed_heartbeats,
                ready_timeout=cfg.ready_timeout_seconds,
                min_idle=int(hints.get("AGENT_MIN_IDLE", cfg.min_idle)),
                max_processes=int(effective.get("max_concurrent_tasks", 4)),
                drain_timeout=float(hints.get("AGENT_DRAIN_TIMEOUT", cfg.drain_timeout_seconds)),
                stop_timeout=cfg.stop_timeout_seconds,
                cancel_grace=cfg.cancel_grace_seconds,
                max_restarts=restarts,
                backoff_base=cfg.backoff_base_seconds,
                backoff_max=cfg.backoff_max_seconds,
                max_task_handoffs=cfg.max_task_handoffs,
                idle_timeout=cfg.idle_seconds,
                alert_errors=cfg.alert_errors,
                alert_window=cfg.alert_window_seconds,
            )
            egress = str(hints.get("AGENT_NETWORK_EGRESS", ""))
            isolation = IsolationConfig(
                level=requested_isolation(hints, cfg.isolation),
                memory_mb=int(hints.get("AGENT_MEMORY_MB", cfg.memory_mb)),
                cpu_cores=float(hints.get("AGENT_CPU_CORES", cfg.cpu_cores)),
                max_pids=int(hints.get("AGENT_MAX_PIDS", cfg.max_pids)),
                filesystem_root=cfg.work_dir or None,
                network_egress=[h.strip() for h in egress.split(",") if h.strip()],
            )
        except (ValidationError, ValueError) as exc:
            raise InvalidRequest(
                f"agent {record.id}: its package's runtime hints are invalid: {exc}"[:1000], code="invalid_agent"
            ) from None
        if hints.get("AGENT_ISOLATION") == "none" and cfg.isolation != "none" and not cfg.allow_unisolated:
            raise InvalidRequest(
                f"agent {record.id}: its package asks for isolation 'none' (the fabric's own environment, "
                "secrets included); this fabric refuses that (AGENT_FABRIC_PROCESS_ALLOW_UNISOLATED)",
                code="isolation_refused",
            )
        assert record.package_path is not None and record.tenant_id is not None
        env = effective.get("env") or {}
        config: dict[str, Any] = {"settings": effective.get("settings") or {}, "log_level": effective.get("log_level")}
        return ProcessAgent(
            id=record.id,
            tenant_id=record.tenant_id,
            name=record.name,
            package_path=record.package_path,
            command=record.argv,
            config=config,
            runtime=runtime,
            isolation=isolation,
            env=dict(env),
            status=record.status.value,
            nats=await self._nats.for_agent(record.id) if self._nats is not None else None,
        )

    async def set_status(self, agent_id: str, status: str, reason: str) -> None:
        """Record a lifecycle move in the registry; a move it has already made is not an error."""
        self.forget(agent_id)
        record = await self.registry.get(agent_id)
        if record is None or record.status == status:
            return
        try:
            await self.registry.transition(agent_id, AgentStatus(status), reason=reason, actor="system:runtime")
        except Conflict:
            pass  # e.g. a stopped agent whose last process only now reported its end
