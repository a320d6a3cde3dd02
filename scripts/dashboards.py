"""Writes the Grafana dashboards (deploy/observability/dashboards/*.json) and the ConfigMap that
ships them (deploy/platform/03-intelligence/observability/grafana-dashboards.yaml).

The dashboards are code here so their panels stay uniform and every query names a series the
fabric exports (tests/deploy/test_observability.py checks both, and that these files are current).
Run after changing a panel: `.venv/bin/python scripts/dashboards.py`.

Gauges the fabric marks "database-wide" (tasks_open, tasks_overdue, agent_sessions, fleet_agents)
are the same on every replica, so panels take max() of them, never sum().
"""

# ruff: noqa: E501 (a PromQL query reads best whole, on one line)
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JSON_DIR = ROOT / "deploy/observability/dashboards"
CONFIGMAP = ROOT / "deploy/platform/03-intelligence/observability/grafana-dashboards.yaml"
JOB = 'job=~"$job"'


def panel(title: str, exprs: dict[str, str], *, unit: str = "short", kind: str = "timeseries") -> dict[str, Any]:
    """One panel; `exprs` maps a legend format to a PromQL query."""
    return {
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(exprs.items())
        ],
    }


def dashboard(uid: str, title: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    for i, p in enumerate(panels):
        p["id"] = i + 1
        p["gridPos"] = {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8}
    return {
        "uid": uid,
        "title": title,
        "tags": ["agent-fabric"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
                {
                    "name": "job",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": "label_values(agent_fabric_tasks_running, job)",
                    "includeAll": True,
                    "multi": True,
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": panels,
    }


def build() -> dict[str, dict[str, Any]]:
    return {
        "agent-fabric-throughput": dashboard(
            "agent-fabric-throughput",
            "agent-fabric: throughput and latency",
            [
                panel(
                    "Tasks finished per second, by status",
                    {"{{status}}": f"sum by (status) (rate(agent_fabric_tasks_total{{{JOB}}}[5m]))"},
                    unit="ops",
                ),
                panel(
                    "Task run time (p50, p95, p99)",
                    {
                        f"p{q}": f"histogram_quantile(0.{q}, sum by (le) "
                        f"(rate(agent_fabric_task_duration_seconds_bucket{{{JOB}}}[5m])))"
                        for q in ("50", "95", "99")
                    },
                    unit="s",
                ),
                panel(
                    "Scheduling latency p99 (ready to dispatch)",
                    {
                        "p99": "histogram_quantile(0.99, sum by (le) "
                        f"(rate(agent_fabric_scheduling_latency_seconds_bucket{{{JOB}}}[5m])))"
                    },
                    unit="s",
                ),
                panel(
                    "HTTP requests per second, by route",
                    {
                        "{{method}} {{route}}": f"sum by (route, method) (rate(agent_fabric_http_requests_total{{{JOB}}}[5m]))"
                    },
                    unit="reqps",
                ),
                panel(
                    "HTTP latency p95, by route",
                    {
                        "{{route}}": "histogram_quantile(0.95, sum by (le, route) "
                        f"(rate(agent_fabric_http_request_duration_seconds_bucket{{{JOB}}}[5m])))"
                    },
                    unit="s",
                ),
                panel(
                    "Tokens per second, by agent and model",
                    {
                        "{{agent_id}} {{model}}": f"sum by (agent_id, model) (rate(agent_fabric_tokens_total{{{JOB}}}[5m]))"
                    },
                ),
                panel(
                    "Database group commit: batch size p95 and commit p99",
                    {
                        "batch p95 {{writer}}": "histogram_quantile(0.95, sum by (le, writer) "
                        f"(rate(agent_fabric_write_batch_size_bucket{{{JOB}}}[5m])))",
                        "commit p99 {{writer}} (s)": "histogram_quantile(0.99, sum by (le, writer) "
                        f"(rate(agent_fabric_write_commit_seconds_bucket{{{JOB}}}[5m])))",
                    },
                ),
                panel(
                    "Policy decisions per second",
                    {"{{decision}}": f"sum by (decision) (rate(agent_fabric_policy_decisions_total{{{JOB}}}[5m]))"},
                    unit="ops",
                ),
            ],
        ),
        "agent-fabric-queues": dashboard(
            "agent-fabric-queues",
            "agent-fabric: queues by priority and tenant",
            [
                panel(
                    "Consumer lag per priority class (JetStream pending + ack pending)",
                    {"{{consumer}}": f"max by (consumer) (agent_fabric_consumer_pending{{{JOB}}})"},
                ),
                panel(
                    "Unfinished tasks by priority and status",
                    {
                        "{{priority}} {{status}}": f"sum by (priority, status) (max by (tenant_id, priority, status) "
                        f"(agent_fabric_tasks_open{{{JOB}}}))"
                    },
                ),
                panel(
                    "Queued and waiting tasks by tenant",
                    {
                        "{{tenant_id}}": f"sum by (tenant_id) (max by (tenant_id, priority, status) "
                        f'(agent_fabric_tasks_open{{{JOB},status=~"queued|waiting|awaiting_approval"}}))'
                    },
                ),
                panel(
                    "Queue wait p95, by priority",
                    {
                        "{{priority}}": "histogram_quantile(0.95, sum by (le, priority) "
                        f"(rate(agent_fabric_queue_wait_seconds_bucket{{{JOB}}}[5m])))"
                    },
                    unit="s",
                ),
                panel(
                    "Held in the run queues, per replica and priority",
                    {"{{pod}} {{priority}}": f"agent_fabric_tasks_queued{{{JOB}}}"},
                ),
                panel(
                    "Running tasks, per replica",
                    {"{{pod}}": f"agent_fabric_tasks_running{{{JOB}}}"},
                ),
            ],
        ),
        "agent-fabric-budgets": dashboard(
            "agent-fabric-budgets",
            "agent-fabric: budgets burn-down",
            [
                panel(
                    "Budget used (share of the limit), by entity",
                    {"{{entity_id}}": f"max by (entity_id) (agent_fabric_budget_usage_ratio{{{JOB}}})"},
                    unit="percentunit",
                ),
                panel(
                    "Budget left (burn-down), by entity",
                    {
                        "{{entity_id}}": f"clamp_min(1 - max by (entity_id) (agent_fabric_budget_usage_ratio{{{JOB}}}), 0)"
                    },
                    unit="percentunit",
                ),
                panel(
                    "Burn rate: share of the limit used per hour",
                    {
                        "{{entity_id}}": f"max by (entity_id) (deriv(agent_fabric_budget_usage_ratio{{{JOB}}}[1h])) * 3600"
                    },
                    unit="percentunit",
                ),
                panel(
                    "Tasks refused by a budget per minute",
                    {"refused": f"sum(rate(agent_fabric_budget_refusals_total{{{JOB}}}[5m])) * 60"},
                ),
            ],
        ),
        "agent-fabric-agents": dashboard(
            "agent-fabric-agents",
            "agent-fabric: agents and instances health",
            [
                panel(
                    "Agent Zero instances up",
                    {"{{instance}}": f"max by (instance) (agent_fabric_agent_zero_instance_up{{{JOB}}})"},
                ),
                panel(
                    "Agent Zero calls per second, by operation and outcome",
                    {
                        "{{operation}} {{outcome}}": "sum by (operation, outcome) "
                        f"(rate(agent_fabric_agent_zero_calls_total{{{JOB}}}[5m]))"
                    },
                    unit="ops",
                ),
                panel(
                    "Agent Zero call latency p95, by operation",
                    {
                        "{{operation}}": "histogram_quantile(0.95, sum by (le, operation) "
                        f"(rate(agent_fabric_agent_zero_call_seconds_bucket{{{JOB}}}[5m])))"
                    },
                    unit="s",
                ),
                panel(
                    "Fleet agents by status",
                    {"{{status}}": f"max by (status) (agent_fabric_fleet_agents{{{JOB}}})"},
                ),
                panel(
                    "Agent Zero sessions by status",
                    {"{{status}}": f"max by (status) (agent_fabric_agent_sessions{{{JOB}}})"},
                ),
                panel(
                    "Agents with a task running, per replica",
                    {"{{pod}}": f"agent_fabric_agents_active{{{JOB}}}"},
                ),
                panel(
                    "Dependencies up (database, NATS, progress bus), per replica",
                    {"{{pod}} {{dependency}}": f"agent_fabric_dependency_up{{{JOB}}}"},
                ),
            ],
        ),
        "agent-fabric-errors": dashboard(
            "agent-fabric-errors",
            "agent-fabric: errors",
            [
                panel(
                    "Failed share of finished tasks",
                    {
                        "failed share": "sum(rate(agent_fabric_tasks_total{"
                        + JOB
                        + ',status=~"failed|timed_out|rejected"}[5m])) / '
                        f"sum(rate(agent_fabric_tasks_total{{{JOB}}}[5m]))"
                    },
                    unit="percentunit",
                ),
                panel(
                    "HTTP 5xx per second, by route",
                    {
                        "{{route}}": f'sum by (route) (rate(agent_fabric_http_requests_total{{{JOB},status=~"5.."}}[5m]))'
                    },
                    unit="reqps",
                ),
                panel(
                    "Refused events and dead letters per minute, by code",
                    {
                        "invalid {{code}}": f"sum by (code) (rate(agent_fabric_events_invalid_total{{{JOB}}}[5m])) * 60",
                        "dead letter {{code}}": f"sum by (code) (rate(agent_fabric_deadletters_total{{{JOB}}}[5m])) * 60",
                    },
                ),
                panel(
                    "Redeliveries (a runner died mid-task) per minute",
                    {"redeliveries": f"sum(rate(agent_fabric_redeliveries_total{{{JOB}}}[5m])) * 60"},
                ),
                panel(
                    "Tasks running past their timeout",
                    {"overdue": f"max(agent_fabric_tasks_overdue{{{JOB}}})"},
                ),
                panel(
                    "Audit: pending in memory, spooled bytes, failed writes per minute",
                    {
                        "pending {{pod}}": f"agent_fabric_audit_pending{{{JOB}}}",
                        "spool bytes {{pod}}": f"agent_fabric_audit_spool_bytes{{{JOB}}}",
                        "failed writes/min": f"sum(rate(agent_fabric_audit_write_failures_total{{{JOB}}}[5m])) * 60",
                    },
                ),
            ],
        ),
    }


def configmap(dashboards: dict[str, dict[str, Any]]) -> str:
    """The ConfigMap Grafana's dashboard sidecar loads (label grafana_dashboard: "1")."""
    lines = [
        "# Generated by scripts/dashboards.py from the same definitions as deploy/observability/dashboards/.",
        "# Grafana's dashboard sidecar (kube-prometheus-stack: sidecar.dashboards.enabled) loads every",
        '# ConfigMap labelled grafana_dashboard: "1".',
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: agent-executor-dashboards",
        "  namespace: intelligence-deepagents",
        "  labels:",
        '    grafana_dashboard: "1"',
        "    app.kubernetes.io/name: agent-executor",
        "    app.kubernetes.io/component: observability",
        '    app.kubernetes.io/version: "0.1.0"',
        "    app.kubernetes.io/part-of: agent-fabric",
        "  annotations:",
        '    argocd.argoproj.io/sync-wave: "3"',
        "data:",
    ]
    for name, doc in sorted(dashboards.items()):
        lines.append(f"  {name}.json: {json.dumps(json.dumps(doc, sort_keys=True))}")
    return "\n".join(lines) + "\n"


def rendered() -> dict[Path, str]:
    """Every generated file and its content."""
    dashboards = build()
    files = {
        JSON_DIR / f"{name}.json": json.dumps(doc, indent=2, sort_keys=True) + "\n" for name, doc in dashboards.items()
    }
    files[CONFIGMAP] = configmap(dashboards)
    return files


def main() -> int:
    for path, text in rendered().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
