"""Prometheus series. One registry per app (tests build several apps in one process).

Names follow the seed (agent_fabric_*) exactly where it names them.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agent_fabric.telemetry.operation_metrics import OperationMetrics

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class FabricMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks_total = Counter(
            "agent_fabric_tasks_total", "Tasks that reached a final status.", ["agent_id", "status"], registry=r
        )
        self.task_duration = Histogram(
            "agent_fabric_task_duration_seconds",
            "Driver run time of finished tasks.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.tokens_total = Counter(
            "agent_fabric_tokens_total", "Tokens reported by drivers.", ["agent_id", "model"], registry=r
        )
        self.agents_active = Gauge(
            "agent_fabric_agents_active", "Distinct agents with a task running in this process.", registry=r
        )
        self.tasks_running = Gauge("agent_fabric_tasks_running", "Tasks running in this process.", registry=r)
        self.tasks_held = Gauge(
            "agent_fabric_tasks_held", "Messages fetched from JetStream and not yet acked.", registry=r
        )
        self.intake_latency = Histogram(
            "agent_fabric_intake_seconds",
            "From fetch to ready in the run queue: parse and in-memory admission (and, for a task with "
            "dependencies, its queued record).",
            ["priority"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.scheduling_latency = Histogram(
            "agent_fabric_scheduling_latency_seconds",
            "From ready in the run queue to dispatch onto a worker slot, for tasks that found a slot free "
            "(the scheduling decision); waits for a slot are in agent_fabric_queue_wait_seconds.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "agent_fabric_queue_wait_seconds",
            "From ready in the run queue to dispatch, every task, by priority class.",
            ["priority"],
            buckets=(0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
            registry=r,
        )
        self.tasks_queued = Gauge(
            "agent_fabric_tasks_queued",
            "Tasks held in this process's run queue (fetched, not started), by priority class.",
            ["priority"],
            registry=r,
        )
        self.events_invalid = Counter(
            "agent_fabric_events_invalid_total", "Task events refused at intake.", ["code"], registry=r
        )
        self.deadletters = Counter(
            "agent_fabric_deadletters_total", "Events kept as dead letters.", ["code"], registry=r
        )
        self.redeliveries = Counter(
            "agent_fabric_redeliveries_total", "Tasks resumed after another attempt died.", registry=r
        )
        self.duplicates = Counter(
            "agent_fabric_duplicate_deliveries_total", "Deliveries for a job already finished or running.", registry=r
        )
        self.results_swept = Counter(
            "agent_fabric_results_swept_total",
            "Finished tasks whose result the sweep published or found published, its mark lost in a crash.",
            registry=r,
        )
        self.consumer_pending = Gauge(
            "agent_fabric_consumer_pending",
            "JetStream lag per consumer (pending + ack pending), as KEDA sees it.",
            ["consumer"],
            registry=r,
        )

        self.policy_decisions = Counter(
            "agent_fabric_policy_decisions_total", "Policy decisions, by effect.", ["decision"], registry=r
        )
        self.budget_usage_ratio = Gauge(
            "agent_fabric_budget_usage_ratio",
            "Used over limit of a budget (largest limited dimension), as last seen by this process.",
            ["entity_id"],
            registry=r,
        )
        self.budget_refusals = Counter(
            "agent_fabric_budget_refusals_total", "Tasks refused by a hard budget limit (LIVE mode).", registry=r
        )
        self.approvals = Counter(
            "agent_fabric_approvals_total", "Approval requests and their outcomes.", ["status"], registry=r
        )
        self.audit_entries = Counter(
            "agent_fabric_audit_entries_total", "Audit entries written by the batched writer.", registry=r
        )
        self.audit_pending = Gauge(
            "agent_fabric_audit_pending", "Audit entries waiting in memory for the database.", registry=r
        )
        self.audit_write_failures = Counter(
            "agent_fabric_audit_write_failures_total",
            "Batched audit writes that failed and will be retried.",
            registry=r,
        )
        self.loop_restarts = Counter(
            "agent_fabric_loop_restarts_total",
            "Consumer loops (fetch-<priority>, keepalive) that crashed and were restarted.",
            ["loop"],
            registry=r,
        )

        # HTTP, Agent Zero calls, write batchers, database-wide state (operation_metrics.py).
        self.ops = OperationMetrics(r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def agent_zero_observer(metrics: FabricMetrics) -> Callable[[str, str, str, float], None]:
    """Feeds finished Agent Zero calls into the call counter and latency histogram."""
    ops = metrics.ops

    def observe(instance: str, operation: str, outcome: str, seconds: float) -> None:
        ops.agent_zero_calls.labels(instance, operation, outcome).inc()
        ops.agent_zero_latency.labels(instance, operation).observe(seconds)

    return observe
