"""Per-tenant (POD) integration configuration: mode, Agent Zero endpoint and limits, budget.

Stored as versioned documents (kind "config", one per tenant), validated before they are stored,
held in memory on every replica and reloaded when agent.control.config announces a change. The
mode decides whether budgets are enforced (LIVE) or only tracked (SANDBOX); the Agent Zero
section is what the agent-zero driver reads once it exists (issue 4).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from agent_fabric.admission.budget_config import BudgetConfig
from agent_fabric.settings import Mode
from agent_fabric.storage.documents import CONFIG, DocumentStore


class AgentZeroConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrl | None = Field(None, description="The tenant's Agent Zero instance; unset: AGENT_ZERO_URL.")
    timeout_seconds: float = Field(300.0, gt=0, le=3600, description="Request timeout towards Agent Zero.")
    max_sessions: int = Field(10, ge=1, le=1000, description="Concurrent Agent Zero sessions for the tenant.")
    max_agents: int | None = Field(
        None, ge=1, le=1000, description="Live fleet agents of the POD; unset: AGENT_ZERO_MAX_AGENTS_PER_POD."
    )
    session_idle_timeout_seconds: float = Field(
        1800.0, gt=0, le=7 * 24 * 3600, description="Idle sessions end after this."
    )


class LlmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    record_prompts: bool = Field(
        False,
        description="Put each LLM gateway call's messages and completion in its audit entry (redacted like "
        "every audit payload, cut to a preview when large). Off: the entry holds model, tokens, cost, outcome.",
    )


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode | None = Field(None, description="SANDBOX tracks budgets, LIVE enforces them; unset: MODE.")
    agent_zero: AgentZeroConfig = Field(default_factory=AgentZeroConfig)
    budget: BudgetConfig | None = Field(None, description="The tenant budget; applied to /api/v1/budgets/tenant.")
    llm: LlmConfig = Field(default_factory=LlmConfig)


class TenantRegistry:
    """The configuration every tenant runs with, in memory (reads are dictionary lookups)."""

    def __init__(self, docs: DocumentStore, default_mode: Mode) -> None:
        self._docs = docs
        self._default_mode: Mode = default_mode
        self._configs: dict[str, TenantConfig] = {}
        self._versions: dict[str, int] = {}

    def mode_for(self, tenant_id: str | None) -> Mode:
        config = self._configs.get(tenant_id) if tenant_id else None
        return config.mode if config is not None and config.mode is not None else self._default_mode

    def config_for(self, tenant_id: str) -> TenantConfig:
        return self._configs.get(tenant_id) or TenantConfig()

    def version_of(self, tenant_id: str) -> int:
        return self._versions.get(tenant_id, 0)

    def apply(self, tenant_id: str, version: int, config: TenantConfig) -> None:
        if version >= self._versions.get(tenant_id, 0):
            self._configs[tenant_id] = config
            self._versions[tenant_id] = version

    async def reload(self) -> None:
        """Read every tenant's newest configuration; a version applied here meanwhile is kept if newer."""
        for doc in await self._docs.current(CONFIG):
            self.apply(doc.doc_id, doc.version, TenantConfig.model_validate(doc.body))
