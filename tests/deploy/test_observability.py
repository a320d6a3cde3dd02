"""Dashboards, alerts and the ServiceMonitor shipped under deploy/ (FR-TEL-5/6).

- `promtool test rules` runs the PrometheusRule's groups against tests/deploy/prometheus/alerts-test.yaml
  (promtool: Debian package `prometheus`; scripts/services.sh installs it for `make test`);
- every series an alert or a dashboard queries is one the fabric exports (telemetry/metrics.py);
- the dashboard JSON files and their ConfigMap are what scripts/dashboards.py renders now;
- the ServiceMonitor selects the Service the Composition renders, on a port it has.
(Schema validation of the new manifests runs in test_manifests.py, with tests/deploy/monitoring_schemas.py.)
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_fabric.telemetry.metrics import FabricMetrics
from tests.deploy import render as rd
from tests.deploy.conftest import Only
from tests.deploy.manifests import REPO_ROOT
from tests.support.debian import apt_install

ALERTS_TEST = Path(__file__).parent / "prometheus" / "alerts-test.yaml"
_SERIES = re.compile(r"\bagent_fabric_[a-z0-9_]+")


def exported_series() -> set[str]:
    """Every series name the fabric's registry can expose (with the suffixes of its kind)."""
    names: set[str] = set()
    for family in FabricMetrics().registry.collect():
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",),
        }[family.type]
        names |= {family.name + s for s in suffixes}
    return names


def dashboards_module() -> Any:
    spec = importlib.util.spec_from_file_location("dashboards", REPO_ROOT / "scripts" / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rule_groups(only: Only) -> list[dict[str, Any]]:
    return list(only("PrometheusRule", "agent-executor").doc["spec"]["groups"])


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        why = apt_install("prometheus")
        found = shutil.which("promtool")
        if found is None:
            pytest.fail(
                f"promtool is not installed and could not be ({why}), so the alert rules cannot be tested: "
                "install the Debian package `prometheus` (scripts/services.sh does, as root or with sudo)"
            )
    return found


def test_alert_rules_pass_promtool_unit_tests(rule_groups: list[dict[str, Any]], tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts-test.yaml")
    checked = subprocess.run(
        [promtool(), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool(), "test", "rules", "alerts-test.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_fires_it(rule_groups: list[dict[str, Any]]) -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    alerts = {rule["alert"] for group in rule_groups for rule in group["rules"] if "alert" in rule}
    assert alerts - fired == set(), f"alerts no test fires: {sorted(alerts - fired)}"
    # The list: error rate, budget, lag, stuck tasks, agents, database and NATS, audit spool.
    for needed in (
        "AgentFabricHighTaskErrorRate",
        "AgentFabricBudgetExceeded",
        "AgentFabricConsumerLagGrowing",
        "AgentFabricTasksStuckRunning",
        "AgentFabricFleetAgentFailed",
        "AgentFabricTasksCrashLooping",
        "AgentFabricDatabaseDown",
        "AgentFabricNatsDown",
        "AgentFabricAuditSpoolGrowing",
    ):
        assert needed in alerts


def test_alerts_and_dashboards_query_only_exported_series(rule_groups: list[dict[str, Any]]) -> None:
    exported = exported_series()
    used = {(rule["alert"], name) for g in rule_groups for rule in g["rules"] for name in _SERIES.findall(rule["expr"])}
    for path in sorted((REPO_ROOT / "deploy/observability/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            used |= {
                (f"{path.name}: {panel['title']}", n) for t in panel["targets"] for n in _SERIES.findall(t["expr"])
            }
    assert used, "no query found"
    unknown = sorted((where, name) for where, name in used if name not in exported)
    assert not unknown, f"queries name series the fabric does not export: {unknown}"


def test_dashboards_cover_the_operators_views_and_are_current() -> None:
    module = dashboards_module()
    files = module.rendered()
    for path, text in files.items():
        assert path.exists(), f"{path} is missing: run scripts/dashboards.py"
        assert path.read_text() == text, f"{path} is stale: run scripts/dashboards.py"
    titles = {json.loads(t)["title"] for p, t in files.items() if p.suffix == ".json"}
    assert titles == {
        "agent-fabric: throughput and latency",
        "agent-fabric: queues by priority and tenant",
        "agent-fabric: budgets burn-down",
        "agent-fabric: agents and instances health",
        "agent-fabric: errors",
    }
    configmap = yaml.safe_load(files[module.CONFIGMAP])
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    for name, text in configmap["data"].items():
        assert json.loads(text) == json.loads((module.JSON_DIR / name).read_text())


def test_service_monitor_scrapes_the_rendered_service(only: Only, rendered: list[rd.Composed]) -> None:
    monitor = only("ServiceMonitor", "agent-executor").doc
    service = rd.by_kind(rendered)["Service"]
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert (
        service["metadata"].get("namespace", "intelligence-deepagents")
        in monitor["spec"]["namespaceSelector"]["matchNames"]
    )
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
