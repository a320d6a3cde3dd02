"""The agent configuration hierarchy: defaults -> package -> environment -> the agent's own layer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent_fabric.agents.config import DEFAULTS, AgentConfig, merge, package_layer, parse_layer
from agent_fabric.agents.registry import AgentRecord
from agent_fabric.agents.states import AgentStatus
from agent_fabric.errors import InvalidDocument


def record() -> AgentRecord:
    now = datetime.now(UTC)
    return AgentRecord(
        id="security-1",
        tenant_id="pod-1",
        name="SecurityAgent",
        version="1.0.0",
        agent_type="security",
        description="",
        runtime="process",
        package_path=Path("/agents/security"),
        command="./run.sh",
        subscribed_topics=("logs.security",),
        findings_topic="findings.security",
        manifest={},
        labels={},
        status=AgentStatus.REGISTERED,
        status_reason=None,
        status_changed_at=now,
        revision=1,
        created_at=now,
        created_by="test",
        registered_at=now,
        updated_at=now,
    )


def test_each_layer_overrides_the_one_before_and_names_itself() -> None:
    environment = AgentConfig(log_level="DEBUG", heartbeat_interval_seconds=10)
    own = AgentConfig(heartbeat_interval_seconds=5, findings_topic="findings.custom", settings={"depth": 3})
    effective = merge(
        "security-1",
        2,
        [("default", DEFAULTS), ("package", package_layer(record())), ("environment", environment), ("agent", own)],
    )
    assert effective.values["log_level"] == "DEBUG" and effective.sources["log_level"] == "environment"
    assert (
        effective.values["heartbeat_interval_seconds"] == 5
        and effective.sources["heartbeat_interval_seconds"] == "agent"
    )
    assert effective.values["metrics_enabled"] is True and effective.sources["metrics_enabled"] == "default"
    assert effective.values["subscribed_topics"] == ["logs.security"]
    assert effective.sources["subscribed_topics"] == "package"
    assert effective.values["findings_topic"] == "findings.custom" and effective.sources["findings_topic"] == "agent"
    assert effective.values["settings"] == {"depth": 3}
    view = effective.view()
    assert view["version"] == 2
    assert view["config"]["log_level"] == {"value": "DEBUG", "source": "environment"}
    assert view["layers"]["agent"]["heartbeat_interval_seconds"] == 5


def test_an_empty_agent_layer_leaves_the_defaults() -> None:
    effective = merge("a", 0, [("default", DEFAULTS), ("agent", AgentConfig())])
    assert effective.values == DEFAULTS.layer()
    assert set(effective.sources.values()) == {"default"}


def test_every_problem_is_listed() -> None:
    with pytest.raises(InvalidDocument) as refused:
        parse_layer(
            {
                "log_level": "LOUD",
                "heartbeat_interval_seconds": 0,
                "max_concurrent_tasks": "many",
                "subscribed_topics": ["ok.topic", "agent.execute.*"],
                "findings_topic": "findings.*",
                "env": {"lower": "x"},
                "colour": "blue",
            }
        )
    locs = sorted(e["loc"][0] for e in refused.value.extra["errors"])
    assert locs == [
        "colour",
        "env",
        "findings_topic",
        "heartbeat_interval_seconds",
        "log_level",
        "max_concurrent_tasks",
        "subscribed_topics",
    ]
    assert refused.value.status == 422 and refused.value.code == "invalid_config"


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidDocument):
        parse_layer(["log_level", "INFO"])
