"""Prometheus series per process agent, read from the lifecycle manager at scrape time (FR-TEL-4,
seed 004 section 7): status, processes, restarts, failures, tasks, CPU and memory. Tasks by final
status are in agent_fabric_tasks_total{agent_id, status} with the other runtimes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent_fabric.agents.isolation import IsolationManager
from agent_fabric.agents.lifecycle import LifecycleManager

STATUSES = ("running", "stopping", "stopped", "failed")


class ProcessAgentCollector(Collector):
    def __init__(self, lifecycle: LifecycleManager, isolation: IsolationManager) -> None:
        self._lifecycle = lifecycle
        self._isolation = isolation

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        status = GaugeMetricFamily(
            "agent_fabric_agent_status",
            "1 for the status each process agent has on this replica.",
            labels=["agent_id", "status"],
        )
        processes = GaugeMetricFamily(
            "agent_fabric_agent_processes", "Live processes of each agent here, by state.", labels=["agent_id", "state"]
        )
        restarts = CounterMetricFamily(
            "agent_fabric_agent_restarts", "Processes started to replace a failed one.", labels=["agent_id"]
        )
        failures = CounterMetricFamily(
            "agent_fabric_agent_process_failures",
            "Process failures (exits, missed heartbeats, no ready).",
            labels=["agent_id"],
        )
        tasks = CounterMetricFamily(
            "agent_fabric_agent_process_tasks",
            "Tasks whose outcome a process of the agent reported.",
            labels=["agent_id"],
        )
        cpu = CounterMetricFamily(
            "agent_fabric_agent_cpu_seconds",
            "CPU seconds of the agent's live processes (children included).",
            labels=["agent_id"],
        )
        memory = GaugeMetricFamily(
            "agent_fabric_agent_memory_rss_bytes", "Resident memory of the agent's live processes.", labels=["agent_id"]
        )
        for agent_id, pool in list(self._lifecycle.pools.items()):
            for name in STATUSES:
                status.add_metric([agent_id, name], 1.0 if pool.status == name else 0.0)
            states: dict[str, int] = {}
            for proc in list(pool.processes.values()):
                states[proc.state.value] = states.get(proc.state.value, 0) + 1
            for state, count in states.items():
                processes.add_metric([agent_id, state], count)
            restarts.add_metric([agent_id], pool.restarts)
            failures.add_metric([agent_id], pool.failures_total)
            tasks.add_metric([agent_id], pool.tasks_total)
            usage = self._isolation.resource_usage(agent_id)["total"]
            cpu.add_metric([agent_id], usage["cpu_seconds"])
            memory.add_metric([agent_id], usage["rss_bytes"])
        yield from (status, processes, restarts, failures, tasks, cpu, memory)
