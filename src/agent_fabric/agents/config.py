"""An agent's configuration: built-in defaults -> the package -> the environment -> the agent's
own stored configuration (seed 004 section 5). Each key's effective value says which layer it
came from. The stored layer is a versioned document (kind "agent_config", as tenant configuration
and policies are): a change is validated first (422 listing every problem), stored as a new
version (If-Match), audited, and announced to the agent on its control subject through the
outbox in the same transaction, so it applies without a restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric import names
from agent_fabric.agents.manifest import subject_problem
from agent_fabric.agents.registry import AgentRecord
from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.errors import Conflict, InvalidDocument, field_errors
from agent_fabric.events.envelope import fabric_event
from agent_fabric.storage.documents import DocumentStore, StoredDoc
from agent_fabric.storage.outbox import OutboxMessage, enqueue

AGENT_CONFIG: Final = "agent_config"
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
Source = Literal["default", "package", "environment", "agent"]


class AgentConfig(BaseModel):
    """One layer: every key optional, unknown keys refused (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    heartbeat_interval_seconds: int | None = Field(None, ge=1, le=3600)
    metrics_enabled: bool | None = None
    max_concurrent_tasks: int | None = Field(None, ge=1, le=1000)
    restart_policy: Literal["always", "on-failure", "never"] | None = None
    subscribed_topics: list[str] | None = Field(None, max_length=100)
    findings_topic: str | None = None
    env: dict[str, str] | None = Field(None, description="Extra environment variables of the agent's process.")
    settings: dict[str, Any] | None = Field(None, description="The agent's own settings, passed through as they are.")

    @field_validator("subscribed_topics")
    @classmethod
    def _subscriptions(cls, topics: list[str] | None) -> list[str] | None:
        for topic in topics or []:
            why = subject_problem(topic, wildcards=True)
            if why:
                raise ValueError(f"{topic!r} {why}")
        return topics

    @field_validator("findings_topic")
    @classmethod
    def _findings(cls, topic: str | None) -> str | None:
        why = subject_problem(topic, wildcards=False) if topic is not None else None
        if why:
            raise ValueError(f"{topic!r} {why}")
        return topic

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        bad = sorted(k for k in env or {} if not _ENV_NAME.match(k))
        if bad:
            raise ValueError(f"environment variable names must be upper-case identifiers: {bad}")
        return env

    def layer(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


DEFAULTS: Final = AgentConfig(
    log_level="INFO",
    heartbeat_interval_seconds=30,
    metrics_enabled=True,
    max_concurrent_tasks=4,
    restart_policy="on-failure",
    env={},
    settings={},
)


def parse_layer(body: Any, *, where: str = "config") -> AgentConfig:
    """A layer from JSON; InvalidDocument (422) lists every problem."""
    try:
        return AgentConfig.model_validate(body)
    except ValidationError as exc:
        detail, errors = field_errors(exc.errors(), root=where)
        raise InvalidDocument(f"agent configuration refused: {detail}", code="invalid_config", errors=errors) from None


def package_layer(record: AgentRecord) -> AgentConfig:
    """What the package declares as its defaults (DEFAULT_SUBSCRIBED_TOPICS, DEFAULT_FINDINGS_TOPIC)."""
    return AgentConfig(
        subscribed_topics=list(record.subscribed_topics) if record.subscribed_topics else None,
        findings_topic=record.findings_topic or None,
    )


@dataclass(frozen=True)
class EffectiveConfig:
    agent_id: str
    version: int  # of the agent's stored layer; 0 when it has none
    values: dict[str, Any]
    sources: dict[str, Source]
    layers: dict[Source, dict[str, Any]]

    def view(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "version": self.version,
            "config": {key: {"value": value, "source": self.sources[key]} for key, value in self.values.items()},
            "effective": self.values,
            "layers": self.layers,
        }


def merge(agent_id: str, version: int, layers: list[tuple[Source, AgentConfig]]) -> EffectiveConfig:
    """Later layers win, key by key (a layer that sets `env` replaces the whole `env`)."""
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for source, layer in layers:
        for key, value in layer.layer().items():
            values[key], sources[key] = value, source
    return EffectiveConfig(agent_id, version, values, sources, {s: layer.layer() for s, layer in layers})


class AgentConfigs:
    def __init__(self, engine: AsyncEngine, docs: DocumentStore, environment: AgentConfig) -> None:
        self._engine = engine
        self._docs = docs
        self._environment = environment

    async def stored(self, agent_id: str) -> StoredDoc | None:
        doc = await self._docs.get(AGENT_CONFIG, agent_id)
        return doc if doc is not None and not doc.deleted else None

    async def effective(self, record: AgentRecord) -> EffectiveConfig:
        """The configuration the agent runs with, and where each key came from."""
        doc = await self.stored(record.id)
        own = AgentConfig.model_validate(doc.body) if doc else AgentConfig()
        return merge(
            record.id,
            doc.version if doc else 0,
            [
                ("default", DEFAULTS),
                ("package", package_layer(record)),
                ("environment", self._environment),
                ("agent", own),
            ],
        )

    async def history(self, agent_id: str, limit: int = 100) -> list[StoredDoc]:
        return await self._docs.history(AGENT_CONFIG, agent_id, limit)

    async def put(
        self, record: AgentRecord, config: AgentConfig, *, actor: str, mode: str, expected_version: int | None
    ) -> EffectiveConfig:
        """Store the agent's layer as a new version, audit it and announce the new effective
        configuration on the agent's control subject, all in one transaction."""
        if record.tenant_id is None:
            raise Conflict(
                f"agent {record.id!r} is not registered yet: register it, then configure it", code="not_registered"
            )
        body = config.layer()
        async with self._engine.begin() as conn:
            doc = await self._docs.put(
                conn,
                kind=AGENT_CONFIG,
                doc_id=record.id,
                tenant_id=record.tenant_id,
                body=body,
                actor=actor,
                expected_version=expected_version,
            )
            previous = doc.version - 1
            effective = merge(
                record.id,
                doc.version,
                [
                    ("default", DEFAULTS),
                    ("package", package_layer(record)),
                    ("environment", self._environment),
                    ("agent", config),
                ],
            )
            await append(
                conn,
                AuditEntry(
                    "agent.config_changed",
                    actor,
                    record.tenant_id,
                    mode,
                    request={"agent_id": record.id, "config": body, "previous_version": previous},
                    response={"version": doc.version},
                ),
            )
            await enqueue(conn, config_announcement(effective, record.tenant_id))
        return effective


def config_announcement(effective: EffectiveConfig, tenant_id: str) -> OutboxMessage:
    """The CloudEvent that tells a running agent its new configuration (id = its Nats-Msg-Id)."""
    event_id = f"agent-config/{effective.agent_id}/{effective.version}"
    data = {
        "agent_id": effective.agent_id,
        "tenant_id": tenant_id,
        "version": effective.version,
        "config": effective.values,
    }
    body = fabric_event(names.AGENT_CONFIG_EVENT_TYPE, data, subject=effective.agent_id, event_id=event_id)
    return OutboxMessage(names.agent_control_subject(effective.agent_id), event_id, body)
