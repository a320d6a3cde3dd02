"""Series for the operations around the task path (FR-TEL-1): HTTP, Agent Zero calls, the write
batchers, and state read from the database at scrape time (sessions, fleet agents, queues).

Labels stay bounded: route templates (never raw paths), instance URLs (configured or registered),
priority classes, tenants (PODs, a short list), statuses. Never a job, session or request id.
Gauges marked "database-wide" read the shared database and are the same on every replica:
aggregate them with max(), not sum().
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class OperationMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.http_requests = Counter(
            "agent_fabric_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "agent_fabric_http_request_duration_seconds",
            "From request to the end of the response (streams included), by route template and method.",
            ["route", "method"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.agent_zero_calls = Counter(
            "agent_fabric_agent_zero_calls_total",
            "Calls to Agent Zero's HTTP API, by instance, operation and outcome (ok or a failure code).",
            ["instance", "operation", "outcome"],
            registry=r,
        )
        self.agent_zero_latency = Histogram(
            "agent_fabric_agent_zero_call_seconds",
            "Agent Zero call latency (retries included), by instance and operation.",
            ["instance", "operation"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.agent_zero_instance_up = Gauge(
            "agent_fabric_agent_zero_instance_up",
            "1 while an Agent Zero instance passes its health checks, else 0 (as this process sees it).",
            ["instance"],
            registry=r,
        )
        self.write_batch_size = Histogram(
            "agent_fabric_write_batch_size",
            "Writes folded into one database transaction by a group-commit writer.",
            ["writer"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.write_commit_seconds = Histogram(
            "agent_fabric_write_commit_seconds",
            "Duration of one group-commit transaction, by writer and outcome.",
            ["writer", "outcome"],
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.critical_line = Counter(
            "agent_fabric_critical_line_statements_total",
            "Critical claims on their own connection (storage/critical_line.py), by outcome; a failed "
            "one went through the urgent writer instead.",
            ["outcome"],
            registry=r,
        )
        self.sessions = Gauge(
            "agent_fabric_agent_sessions",
            "Agent Zero sessions by status (database-wide).",
            ["status"],
            registry=r,
        )
        self.fleet_agents = Gauge(
            "agent_fabric_fleet_agents",
            "Fleet agents by status (database-wide).",
            ["status"],
            registry=r,
        )
        self.tasks_open = Gauge(
            "agent_fabric_tasks_open",
            "Unfinished tasks by tenant, priority class and status (database-wide).",
            ["tenant_id", "priority", "status"],
            registry=r,
        )
        self.tasks_overdue = Gauge(
            "agent_fabric_tasks_overdue",
            "Tasks still running past their timeout (database-wide): their runner is stuck or gone.",
            registry=r,
        )
        self.dependency_up = Gauge(
            "agent_fabric_dependency_up",
            "1 if a dependency (database, nats, progress) answered this process's last probe, else 0.",
            ["dependency"],
            registry=r,
        )
        self.audit_spool_bytes = Gauge(
            "agent_fabric_audit_spool_bytes",
            "Audit entries spooled to disk while the database was away, in bytes (this process's state dir).",
            registry=r,
        )
