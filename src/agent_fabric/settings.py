"""Typed settings, one section per subsystem, read from `AGENT_FABRIC_*` environment variables.

Each section carries its own prefix so the contract's flat names hold
(`AGENT_FABRIC_NATS_URL`, `AGENT_FABRIC_DATABASE_URL`, `AGENT_FABRIC_JWT_SECRET`, ...).
Unsafe combinations are refused at start-up rather than discovered in production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent_fabric.admission.policy_model import Action
from agent_fabric.events.json_limits import DEFAULT_MAX_JSON_DEPTH

Mode = Literal["SANDBOX", "LIVE"]


def _section(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True)


class NatsSettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_NATS_")

    url: str | None = Field(
        None,
        description="NATS server URL(s), comma-separated. Unset: start the bundled nats-server "
        "with JetStream, its data under STATE_DIR/nats.",
    )
    embedded_port: int = Field(0, ge=0, le=65535, description="Port for the bundled nats-server; 0 picks a free one.")
    stream_replicas: int = Field(1, ge=1, le=5, description="Replicas of the fabric's streams.")
    ack_wait_seconds: float = Field(
        30.0,
        gt=0,
        description="How long JetStream waits for an ack before redelivering. In-flight tasks "
        "send in_progress at a third of this, so only a dead process lets it lapse.",
    )
    duplicate_window_seconds: float = Field(
        120.0, gt=0, description="JetStream duplicate window: a repeated CloudEvent id is dropped."
    )
    max_ack_pending: int = Field(100_000, ge=1, description="Unacked messages per consumer across all replicas.")
    status_max_age_seconds: float = Field(
        7 * 24 * 3600.0, gt=0, description="How long results stay in the AGENT_STATUS stream."
    )
    # Credentials and TLS for an external server (the bundled one uses its generated user).
    user: str | None = Field(None, description="User name for NATS user/password authentication.")
    password: SecretStr | None = Field(None, description="Password for NATS user/password authentication.")
    token: SecretStr | None = Field(None, description="NATS authentication token.")
    nkey_seed_file: Path | None = Field(None, description="File holding the fabric's NKey user seed (SU...).")
    creds_file: Path | None = Field(
        None, description="NATS credentials file (user JWT + NKey seed) from a decentralised-auth operator."
    )
    tls_ca_file: Path | None = Field(None, description="CA bundle that verifies the NATS server's certificate.")
    tls_cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    tls_key_file: Path | None = Field(None, description="Private key of the client certificate.")
    tls_hostname: str | None = Field(None, description="Server name to verify when it differs from the URL's host.")

    @model_validator(mode="after")
    def _pairs(self) -> NatsSettings:
        if (self.user is None) != (self.password is None):
            raise ValueError("AGENT_FABRIC_NATS_USER and AGENT_FABRIC_NATS_PASSWORD go together")
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("AGENT_FABRIC_NATS_TLS_KEY_FILE needs AGENT_FABRIC_NATS_TLS_CERT_FILE")
        return self

    @property
    def servers(self) -> list[str]:
        """`url` as the list nats-py wants: a comma-separated string is one URL to it."""
        return nats_servers(self.url or "")

    @field_validator("url")
    @classmethod
    def _urls_listed(cls, value: str | None) -> str | None:
        if value is not None and not nats_servers(value):
            raise ValueError("AGENT_FABRIC_NATS_URL names no server; unset it to use the bundled one")
        return value


def nats_servers(urls: str) -> list[str]:
    """`nats://a:4222, nats://b:4222` -> one entry per server (blanks dropped)."""
    return [url.strip() for url in urls.split(",") if url.strip()]


class DatabaseSettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_DATABASE_")

    url: SecretStr | None = Field(
        None,
        description="SQLAlchemy async URL. Unset: sqlite+aiosqlite:///STATE_DIR/fabric.db. "
        "Production: postgresql+asyncpg://...",
    )
    auto_migrate: bool = Field(
        True,
        description="Run Alembic migrations at start-up (serialised by an advisory lock on "
        "Postgres). Deployments that migrate in an init container set this to false.",
    )
    pool_size: int = Field(20, ge=1, description="Connections per process (Postgres).")
    batch_max: int = Field(512, ge=1, description="Most task writes folded into one statement.")
    flushers: int = Field(
        4, ge=1, le=32, description="Write transactions in flight at once on Postgres (SQLite always uses 1)."
    )
    batch_linger_ms: float = Field(
        1.0, ge=0, description="How long a write waits for company before its batch is sent."
    )


class RedisSettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_REDIS_")

    url: SecretStr | None = Field(
        None,
        description="Redis or Dragonfly URL for progress pub/sub (langgraph:stream:{job_id}). "
        "Unset: progress goes over NATS core subjects.",
    )


class SecuritySettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_JWT_")

    secret: SecretStr | None = Field(
        None, description="HS256 signing key. Unset: generated once into STATE_DIR/jwt-secret."
    )
    public_key: str | None = Field(None, description="PEM public key; when set, tokens are verified with RS256/ES256.")
    algorithm: Literal["HS256", "RS256", "ES256"] = Field("HS256", description="JWT algorithm.")
    issuer: str = Field("agent-fabric", description="Required `iss` claim.")
    audience: str = Field("agent-fabric", description="Required `aud` claim.")
    default_ttl_seconds: int = Field(3600, ge=1, description="Lifetime of tokens the CLI issues.")
    jwks_url: str | None = Field(
        None, description="JWKS URL of an external identity provider (RS256/ES256); keys are picked by `kid`."
    )
    access_ttl_seconds: int = Field(900, ge=60, description="Lifetime of JWTs exchanged for an API key.")
    refresh_ttl_seconds: int = Field(86_400, ge=300, description="Lifetime of a refresh token (single use).")


class HttpSettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_HTTP_")

    cors_origins: str = Field(
        "", description="Comma-separated origins allowed by CORS. Empty (the default): CORS is off."
    )
    rate_limit_per_second: float = Field(
        50.0, gt=0, description="Sustained requests per second per credential (token bucket, per replica)."
    )
    rate_limit_burst: int = Field(100, ge=1, description="Requests a credential may send at once.")

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


# The GPUBROKER roles (deploy/agent-zero/agents/) by task type.
DEFAULT_PROFILE_ROUTES = {
    "FIND_GPU": "gpubroker-provider",
    "DEPLOY_GPU": "gpubroker-provisioner",
    "SCALE_GPU": "gpubroker-provisioner",
    "TERMINATE_GPU": "gpubroker-provisioner",
    "OPTIMIZE_COST": "gpubroker-optimizer",
    "HEALTH_CHECK": "gpubroker-monitor",
}


class AgentZeroSettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_AGENT_ZERO_")

    url: str = Field("", description="Agent Zero instance URL(s), comma-separated. Empty: the runtime is off.")
    api_key: SecretStr = Field(
        SecretStr(""), description="API key(s) (X-API-KEY), comma-separated: one for all instances or one each."
    )
    sandbox_url: str = Field(
        "",
        description="Instance URL(s) for tenants in SANDBOX mode, comma-separated. Empty: SANDBOX tenants use "
        "the instances of AGENT_FABRIC_AGENT_ZERO_URL.",
    )
    sandbox_api_key: SecretStr = Field(
        SecretStr(""), description="API key(s) of the sandbox instances: one for all or one each."
    )
    timeout_seconds: float = Field(300.0, gt=0, description="Longest wait for one Agent Zero call.")
    retries: int = Field(3, ge=0, le=10, description="Retries on connection errors and 502/503/504.")
    max_in_flight: int = Field(
        8, ge=1, le=10, description="Tasks run at once per instance (Agent Zero serves 10 requests at a time)."
    )
    poll_seconds: float = Field(1.0, gt=0, description="How often a run's log is read for progress.")
    health_interval_seconds: float = Field(
        10.0, gt=0, description="How often each instance's /api/health is checked (a down instance gets no work)."
    )
    cost_per_message_usd: float = Field(
        0.0, ge=0, description="Estimated cost of one session message (/api/v2/agent/message), charged to the POD."
    )
    session_sweep_seconds: float = Field(
        5.0, gt=0, description="How often each replica ends sessions idle past their POD's idle timeout."
    )
    profile_routes: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_PROFILE_ROUTES),
        description="Task type -> Agent Zero profile (JSON), used when a task names no profile.",
    )
    max_agents_per_pod: int = Field(
        10,
        ge=1,
        le=1000,
        description="Live fleet agents (orchestrator included) per POD; a tenant's "
        "configuration (agent_zero.max_agents) overrides it.",
    )
    health_cache_seconds: float = Field(
        30.0, ge=0, description="How long GET /api/v2/agent/health answers from its last check (per POD)."
    )
    probe_seconds: float = Field(
        5.0,
        gt=0,
        description="Longest wait for a quick question to an instance: the first health check of a newly "
        "registered one, whether a fleet agent's chat is working.",
    )
    orchestrator_profile: str = Field(
        "gpubroker-orchestrator", description="Agent Zero profile of a POD fleet's orchestrator (Agent 0)."
    )
    fleet_chat_lifetime_hours: float = Field(
        720.0,
        gt=0,
        description="lifetime_hours of a fleet agent's chat: Agent Zero drops chats older than this "
        "(its default, 24 h, would end a long-lived orchestrator).",
    )
    fleet_claim_seconds: float = Field(
        60.0,
        gt=0,
        description="Lease of a task's claim on a fleet agent's chat, renewed while the task runs: a claim "
        "left by a replica that died frees the agent after this long.",
    )

    def instances(self) -> list[tuple[str, str]]:
        """The LIVE set from the environment: (url, api key) pairs."""
        return _pair_keys(self.url, self.api_key, "AGENT_FABRIC_AGENT_ZERO_API_KEY")

    def sandbox_instances(self) -> list[tuple[str, str]]:
        return _pair_keys(self.sandbox_url, self.sandbox_api_key, "AGENT_FABRIC_AGENT_ZERO_SANDBOX_API_KEY")


def _pair_keys(url_list: str, key_list: SecretStr, key_var: str) -> list[tuple[str, str]]:
    urls = [u.strip() for u in url_list.split(",") if u.strip()]
    keys = [k.strip() for k in key_list.get_secret_value().split(",")]
    if urls and len(keys) not in (1, len(urls)):
        raise ValueError(f"{key_var} needs one key, or one per URL")
    return [(url, keys[i] if len(keys) > 1 else keys[0]) for i, url in enumerate(urls)]


class WorkerSettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_WORKER_")

    concurrency: int = Field(64, ge=1, description="Tasks one process runs at once.")
    fetch_batch: int = Field(128, ge=1, description="Most messages asked for in one pull.")
    default_timeout_seconds: float = Field(
        3600.0, gt=0, description="Run time limit for tasks that set no timeout_seconds."
    )
    max_attempts: int = Field(
        5,
        ge=1,
        description="Deliveries of one task before it fails with `too_many_attempts` "
        "(a task that crashes every process that runs it must not loop forever).",
    )


class SchedulerSettings(BaseSettings):
    """How held tasks are ordered and bounded (scheduling/; README "Scheduling")."""

    model_config = _section("AGENT_FABRIC_SCHED_")

    window_per_priority: int = Field(
        20_000,
        ge=1,
        description="Tasks one process holds (fetched, not started) per priority class. The fair queue "
        "orders what is held, so this is how far past a flooding tenant's backlog another tenant's task "
        "is still seen. Held tasks still count in the consumer's pending count that KEDA reads.",
    )
    ageing_seconds: float = Field(
        15.0,
        gt=0,
        description="A held task moves up one priority class for every this many seconds it waits, so "
        "under a flood of urgent work lower classes still progress.",
    )
    reserved_critical_slots: int = Field(
        4,
        ge=0,
        description="Worker slots beyond WORKER_CONCURRENCY that only critical tasks (or tasks aged to critical) "
        "may take, so critical work starts even while long tasks hold every ordinary slot.",
    )
    tenant_max_running: int = Field(0, ge=0, description="Tasks of one tenant running at once per process; 0: no cap.")
    agent_max_running: int = Field(
        0, ge=0, description="Tasks of one agent (agent_id, else runtime/profile) running at once per process; 0: none."
    )
    tenant_caps: dict[str, int] = Field(
        default_factory=dict, description='Per-tenant running caps overriding tenant_max_running, e.g. {"acme": 8}.'
    )
    agent_caps: dict[str, int] = Field(
        default_factory=dict, description='Per-agent running caps overriding agent_max_running, e.g. {"gpu-1": 2}.'
    )
    max_queued_per_tenant: int = Field(
        10_000, ge=0, description="Queued (or waiting) tasks one tenant may have; past it `queue_full`. 0: no limit."
    )
    max_queued_per_agent: int = Field(
        0, ge=0, description="Queued tasks one agent may have (FR-SCHED-3); past it `queue_full`. 0: no limit."
    )
    queue_full_http_status: Literal[429, 503] = Field(429, description="HTTP status of a `queue_full` refusal.")
    dependency_wait_seconds: float = Field(
        3600.0,
        gt=0,
        description="How long a task waits for a dependency that does not exist yet before it fails "
        "with `dependency_missing`.",
    )
    sweep_seconds: float = Field(
        1.0, gt=0, description="How often a replica fails tasks whose missing dependencies never appeared."
    )


# Seed 000 req. 1.2: deploy, terminate and scale need approval before they run.
HIGH_IMPACT_ACTIONS = ("task:DEPLOY_GPU", "task:TERMINATE_GPU", "task:SCALE_GPU")


class PolicySettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_POLICY_")

    default_effect: Literal["allow", "deny"] = Field(
        "allow", description="Decision for an action no rule matches (deny makes every policy an allow-list)."
    )
    reload_seconds: float = Field(
        30.0,
        gt=0,
        description="Safety-net reload of policies, budgets and tenant configuration from the database, "
        "besides the agent.control.* broadcast that applies a change on every replica at once.",
    )
    audit_decisions: bool = Field(True, description="Write every policy decision to the audit trail (batched).")
    approval_required_actions: list[str] = Field(
        default_factory=lambda: list(HIGH_IMPACT_ACTIONS),
        description="Actions (`<kind>:<target>`, JSON list) that need approval when no policy rule matches them "
        "and the default effect is allow: seed 000's high-impact tasks. A tenant's explicit rule still decides; "
        "an empty list turns the built-in gate off.",
    )

    @field_validator("approval_required_actions")
    @classmethod
    def _actions(cls, actions: list[str]) -> list[str]:
        for name in actions:
            Action.parse(name)  # ValueError names the bad entry
        return actions


class ApprovalSettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_APPROVAL_")

    default_ttl_seconds: float = Field(
        3600.0, gt=0, description="How long an approval waits before it expires, unless its rule says otherwise."
    )
    max_ttl_seconds: float = Field(7 * 24 * 3600.0, gt=0, description="Longest wait a rule or request may ask for.")
    sweep_seconds: float = Field(
        1.0, gt=0, description="How often a replica expires overdue approvals and republishes unsent events."
    )


class BudgetSettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_BUDGET_")

    estimate_tokens: int = Field(0, ge=0, description="Tokens reserved per task that states no estimate_tokens.")
    estimate_compute_seconds: float = Field(
        0.0, ge=0, description="Compute seconds reserved per task that states no estimate_compute_seconds."
    )
    estimate_cost_usd: float = Field(0.0, ge=0, description="USD reserved per task that states no estimate_cost_usd.")
    fold_interval_seconds: float = Field(
        0.25, gt=0, description="How often settled task usage is folded into the budget counters."
    )
    http_status: Literal[402, 429] = Field(402, description="HTTP status of a `budget_exceeded` refusal.")


class AuditSettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_AUDIT_")

    flush_interval_ms: float = Field(
        100.0, gt=0, description="Longest an audit entry waits before its batch is written."
    )
    batch_max: int = Field(1000, ge=1, description="Most audit entries written in one statement.")
    buffer_max: int = Field(
        100_000,
        ge=1,
        description="Entries held in memory while the database is away; beyond this they are appended to "
        "STATE_DIR/audit-spool and written once it is back.",
    )


class TelemetrySettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_TELEMETRY_")

    otlp_endpoint: str | None = Field(
        None,
        description="OpenTelemetry collector base URL for OTLP/HTTP traces (spans go to <url>/v1/traces). "
        "Unset: the standard OTEL_EXPORTER_OTLP_ENDPOINT if set, else tracing is off (no cost).",
    )
    service_name: str = Field("agent-fabric", description="service.name of the spans.")
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces recorded; a sampled parent's traceparent is always followed."
    )


# -- issue 15: the NATS task door, outbound URL checks, HTTPS --


class NatsDoorSettings(BaseSettings):
    """Who may put tasks on agent.execute.* (inbound/nats_credentials.py)."""

    model_config = _section("AGENT_FABRIC_NATS_DOOR_")

    allow_anonymous: bool = Field(
        False,
        description="Run NATS tasks that carry no Authorization header, as the payload says (tenant, "
        "metadata.user). Only for a trusted network; logged as a warning at start-up; refused in MODE=LIVE. "
        "A task that does carry a credential is still checked.",
    )
    rate_limit_per_second: float = Field(
        500.0,
        gt=0,
        description="Sustained NATS tasks per second per credential (token bucket, per replica). "
        "Past it, messages wait in JetStream (redelivered after the bucket refills), they are not refused.",
    )
    rate_limit_burst: int = Field(1000, ge=1, description="NATS tasks a credential may publish at once.")
    key_cache_seconds: float = Field(
        30.0, ge=0, description="How long a verified API key is remembered (revocations apply at once anyway)."
    )


class OutboundSettings(BaseSettings):
    """Which URLs a tenant may make the fabric call (security/outbound_urls.py)."""

    model_config = _section("AGENT_FABRIC_OUTBOUND_")

    allowlist: str = Field(
        "",
        description="Comma-separated host names (`a0.example.com`, `*.svc.cluster.local`) and CIDRs "
        "(`203.0.113.0/24`) that registered URLs may point at. Empty: any host whose addresses are all public.",
    )
    allowed_ranges: str = Field(
        "",
        description="Comma-separated CIDRs opened inside the ranges refused by default (loopback, private, "
        "link-local, cloud metadata, ...), e.g. `10.0.0.0/8` for in-cluster Agent Zero, `127.0.0.0/8` for tests.",
    )

    @property
    def allowlist_items(self) -> list[str]:
        return [item.strip().lower() for item in self.allowlist.split(",") if item.strip()]

    @property
    def allowed_range_items(self) -> list[str]:
        return [item.strip() for item in self.allowed_ranges.split(",") if item.strip()]


class TlsSettings(BaseSettings):
    """HTTPS served directly by `agent-fabric serve` (uvicorn); behind an ingress, terminate TLS there."""

    model_config = _section("AGENT_FABRIC_TLS_")

    cert_file: Path | None = Field(None, description="PEM certificate (chain) for HTTPS. Unset: plain HTTP.")
    key_file: Path | None = Field(None, description="PEM private key of the certificate.")
    client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."
    )


class AgentsSettings(BaseSettings):
    """Agents the fabric manages (agents/; README "Agents")."""

    model_config = _section("AGENT_FABRIC_AGENTS_")

    dir: str = Field(
        "",
        description="Agents directories to scan for packages (folders with a .env.discovery file), separated "
        "by ':' or ','. Empty: STATE_DIR/agents.",
    )
    rescan_seconds: float = Field(60.0, gt=0, description="How often the agents directories are scanned again.")
    token_ttl_seconds: int = Field(900, ge=30, le=86_400, description="Default lifetime of a one-time discovery token.")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="The environment layer of every agent's configuration (JSON), between the built-in "
        'defaults and an agent\'s stored configuration, e.g. {"log_level": "DEBUG"}.',
    )


class LlmUpstream(BaseModel):
    """One OpenAI-compatible provider the gateway forwards to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Names the upstream (tenant keys refer to it)."
    )
    base_url: str = Field(..., min_length=1, description="Its API base, ending before /chat/completions (e.g. .../v1).")
    api_key: SecretStr | None = Field(None, description="Its key; a tenant's sealed key for this upstream wins.")
    models: list[str] = Field(..., min_length=1, description="Models it serves (the allowlist; `*` globs allowed).")


class LlmPrice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_1k: float = Field(0.0, ge=0, description="USD per 1,000 prompt tokens.")
    output_per_1k: float = Field(0.0, ge=0, description="USD per 1,000 completion tokens.")


class LlmSettings(BaseSettings):
    model_config = _section("AGENT_FABRIC_LLM_")

    upstreams: list[LlmUpstream] = Field(
        default_factory=list,
        description="JSON list of upstreams [{name, base_url, api_key, models}]; a model goes to the first that "
        "lists it. Empty: the gateway answers /v1/models with no models and refuses every call.",
    )
    prices: dict[str, LlmPrice] = Field(
        default_factory=dict,
        description="JSON object model -> {input_per_1k, output_per_1k} in USD; an unlisted model costs 0.",
    )
    public_base_url: str | None = Field(
        None,
        description="The URL agents reach the gateway at (given to them as OPENAI_BASE_URL). Unset: "
        "http://127.0.0.1:<HTTP_PORT>/v1.",
    )
    key_grace_seconds: float = Field(
        300.0,
        ge=0,
        description="A per-task key lives for the task's timeout plus this (it is revoked when the task ends).",
    )
    key_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="How long a replica trusts a key it has checked; revocations reach every replica at once "
        "by broadcast, this bounds a missed one (0: read the table on every call).",
    )
    default_max_tokens: int = Field(
        1024, ge=1, description="Completion tokens the budget check reserves for a call that sets no max_tokens."
    )
    upstream_timeout_seconds: float = Field(300.0, gt=0, description="Longest wait on an upstream response.")
    max_request_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="Largest request body the gateway takes (/v1/*): prompts outgrow task events.",
    )
    relay_buffer_events: int = Field(
        256,
        ge=1,
        description="Token events a streamed call may hold for its watchers; past it the oldest are dropped "
        "(the agent's stream is never slowed).",
    )
    approval_wait_seconds: float = Field(
        0.0, ge=0, description="How long a call to a model that needs approval waits for it (0: refused at once)."
    )


class ProcessAgentSettings(BaseSettings):
    """The `process` runtime (agents/lifecycle.py, drivers/process.py; README "Process agents").
    Fabric-wide defaults; a package's .env.discovery may set the per-agent ones (AGENT_MIN_IDLE, ...)."""

    model_config = _section("AGENT_FABRIC_PROCESS_")

    work_dir: str = Field("", description="Parent of agents' working directories. Empty: STATE_DIR/agent-work.")
    missed_heartbeats: int = Field(3, ge=1, le=100, description="Heartbeats missed before a process is failed.")
    ready_timeout_seconds: float = Field(30.0, gt=0, description="Longest wait for a new process's `ready`.")
    min_idle: int = Field(1, ge=0, le=64, description="Warm processes per started agent (AGENT_MIN_IDLE overrides).")
    drain_timeout_seconds: float = Field(
        30.0, ge=0, description="Graceful stop: how long a running task may finish (AGENT_DRAIN_TIMEOUT overrides)."
    )
    stop_timeout_seconds: float = Field(5.0, ge=0, description="After SIGTERM, how long before SIGKILL.")
    cancel_grace_seconds: float = Field(
        5.0, ge=0, description="A process that does not stop a cancelled (or timed-out) task in this long is killed."
    )
    max_restarts: int = Field(5, ge=1, description="Process failures in a row before the agent stays `failed`.")
    backoff_base_seconds: float = Field(0.5, ge=0, description="First restart delay; doubles with each failure.")
    backoff_max_seconds: float = Field(60.0, ge=0, description="Longest restart delay.")
    max_task_handoffs: int = Field(
        3, ge=0, description="Times one attempt of a task moves to a fresh process after its process died."
    )
    idle_seconds: float = Field(
        60.0, gt=0, description="A process idle this long while the pool holds more than min_idle is stopped."
    )
    alert_errors: int = Field(
        5, ge=1, description="Failed processes or tasks of one agent within alert_window_seconds that raise an alert."
    )
    alert_window_seconds: float = Field(60.0, gt=0, description="The error-rate alert's window.")
    runs_retention_days: float = Field(
        30.0, gt=0, description="Process runs (session history) kept this long after they ended."
    )
    isolation: Literal["none", "process", "container"] = Field(
        "process", description="Default isolation level (AGENT_ISOLATION overrides per package)."
    )
    allow_unisolated: bool = Field(
        False,
        description="Let a package ask for AGENT_ISOLATION=none (a plain child with the fabric's environment, "
        "secrets included). Off: such an agent is refused with `isolation_refused`.",
    )
    memory_mb: int = Field(512, ge=16, description="Default memory limit per process (AGENT_MEMORY_MB overrides).")
    cpu_cores: float = Field(1.0, gt=0, description="Default CPU limit per process (AGENT_CPU_CORES overrides).")
    max_pids: int = Field(256, ge=8, description="Default process/thread limit per process (AGENT_MAX_PIDS).")
    log_lines: int = Field(2000, ge=10, description="Log lines kept in memory per agent (stderr, stray stdout).")
    log_retention_seconds: float = Field(3600.0, gt=0, description="Log lines older than this are dropped.")


class A2ASettings(BaseSettings):
    """The `a2a` runtime (drivers/a2a.py; README "A2A agents")."""

    model_config = _section("AGENT_FABRIC_A2A_")

    poll_seconds: float = Field(1.0, gt=0, le=300, description="How often a running A2A task is read (`tasks/get`).")
    request_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="Longest wait for one A2A call (message/send, tasks/get, tasks/cancel)."
    )


class Settings(BaseSettings):
    """The whole configuration. Build it once in `cli.py` or a test and pass it down."""

    model_config = SettingsConfigDict(env_prefix="AGENT_FABRIC_", extra="ignore", frozen=True)

    state_dir: Path = Field(Path(".agent-fabric"), description="Embedded state (NATS data, SQLite, key).")
    mode: Mode = Field("SANDBOX", description="Default mode for tenants that set none.")
    http_host: str = Field("0.0.0.0", description="Address the HTTP server binds.")
    http_port: int = Field(8080, ge=1, le=65535, description="HTTP port.")
    log_level: str = Field("INFO", description="Root log level.")
    log_json: bool = Field(True, description="Log one JSON object per line.")
    max_event_bytes: int = Field(
        1_048_576, ge=1024, description="Largest task event accepted (HTTP 413, NATS dead-letter)."
    )
    max_json_depth: int = Field(
        DEFAULT_MAX_JSON_DEPTH,
        ge=4,
        le=512,
        description="Deepest nesting accepted in incoming JSON on every door (HTTP 400, NATS dead-letter).",
    )
    shutdown_grace_seconds: float = Field(
        25.0,
        ge=0,
        description="On SIGTERM, how long in-flight tasks may finish before they are handed back "
        "to JetStream. Keep below the pod's terminationGracePeriodSeconds.",
    )
    secrets_key: SecretStr | None = Field(
        None,
        description="Master secret (>= 32 characters) that seals stored secrets such as registered Agent Zero "
        "API keys. Unset: derived from the JWT signing secret.",
    )
    publish_transitions: bool = Field(
        True, description="Publish non-final transitions (running, ...) on agent.status.<state>."
    )
    console_enabled: bool = Field(
        True,
        description="Serve the operators' console at /console (static pages calling the API with the "
        "operator's own token; false: /console answers 404).",
    )

    nats: NatsSettings = Field(default_factory=NatsSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    jwt: SecuritySettings = Field(default_factory=SecuritySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    agent_zero: AgentZeroSettings = Field(default_factory=AgentZeroSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    approval: ApprovalSettings = Field(default_factory=ApprovalSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    nats_door: NatsDoorSettings = Field(default_factory=NatsDoorSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    agents: AgentsSettings = Field(default_factory=AgentsSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    process: ProcessAgentSettings = Field(default_factory=ProcessAgentSettings)
    a2a: A2ASettings = Field(default_factory=A2ASettings)

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        secret = self.jwt.secret.get_secret_value() if self.jwt.secret else None
        if secret is not None and len(secret) < 32:
            raise ValueError("AGENT_FABRIC_JWT_SECRET must be at least 32 characters")
        if self.secrets_key is not None and len(self.secrets_key.get_secret_value()) < 32:
            raise ValueError("AGENT_FABRIC_SECRETS_KEY must be at least 32 characters")
        if self.jwt.algorithm != "HS256" and not (self.jwt.public_key or self.jwt.jwks_url):
            raise ValueError(f"AGENT_FABRIC_JWT_ALGORITHM={self.jwt.algorithm} needs AGENT_FABRIC_JWT_PUBLIC_KEY")
        self.agent_zero.instances()  # refuses a key list that does not match the URLs
        self.agent_zero.sandbox_instances()
        if self.approval.default_ttl_seconds > self.approval.max_ttl_seconds:
            raise ValueError("AGENT_FABRIC_APPROVAL_DEFAULT_TTL_SECONDS exceeds AGENT_FABRIC_APPROVAL_MAX_TTL_SECONDS")
        if self.mode == "LIVE" and secret is None and not (self.jwt.public_key or self.jwt.jwks_url):
            raise ValueError(
                "MODE=LIVE refuses a generated JWT key: set AGENT_FABRIC_JWT_SECRET or AGENT_FABRIC_JWT_PUBLIC_KEY"
            )
        return self

    @model_validator(mode="after")
    def _refuse_anonymous_nats_in_live(self) -> Settings:
        if self.mode == "LIVE" and self.nats_door.allow_anonymous:
            raise ValueError(
                "MODE=LIVE refuses AGENT_FABRIC_NATS_DOOR_ALLOW_ANONYMOUS: NATS tasks must carry a credential"
            )
        if (self.tls.cert_file is None) != (self.tls.key_file is None):
            raise ValueError("HTTPS needs both AGENT_FABRIC_TLS_CERT_FILE and AGENT_FABRIC_TLS_KEY_FILE")
        if self.tls.client_ca_file is not None and self.tls.cert_file is None:
            raise ValueError("AGENT_FABRIC_TLS_CLIENT_CA_FILE needs HTTPS on (TLS_CERT_FILE and TLS_KEY_FILE)")
        return self

    @property
    def database_url(self) -> str:
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.state_dir / 'fabric.db').resolve()}"

    @property
    def redis_url(self) -> str | None:
        return self.redis.url.get_secret_value() if self.redis.url else None

    @property
    def agents_dirs(self) -> list[Path]:
        """The agents directories, in order (AGENT_FABRIC_AGENTS_DIR, else STATE_DIR/agents)."""
        parts = [p.strip() for p in self.agents.dir.replace(",", ":").split(":") if p.strip()]
        return [Path(p) for p in parts] if parts else [self.state_dir / "agents"]
