"""Every wire name the fabric uses, defined once.

Subjects, streams, consumers, Redis channels and CloudEvent types are part of the external
contract (ARCHITECTURE.md); deploy/ manifests and tests import them from here.
"""

from __future__ import annotations

from typing import Final

# JetStream: the task stream and its per-priority durable consumers.
TASK_STREAM: Final = "AGENT_EXECUTION"
TASK_SUBJECT_PREFIX: Final = "agent.execute"
TASK_SUBJECTS: Final = f"{TASK_SUBJECT_PREFIX}.*"
CONSUMER_BASE: Final = "agent-executor-workers"
PRIORITIES: Final = ("critical", "high", "normal", "low")

# Results and transitions. AGENT_STATUS keeps them so a consumer that was away can catch up,
# and its duplicate window drops a result re-published after a crash.
STATUS_STREAM: Final = "AGENT_STATUS"
STATUS_SUBJECT_PREFIX: Final = "agent.status"
STATUS_SUBJECTS: Final = f"{STATUS_SUBJECT_PREFIX}.>"

DEADLETTER_STREAM: Final = "AGENT_DEADLETTER"
DEADLETTER_SUBJECT: Final = "agent.deadletter"

# Progress: Redis/Dragonfly pub/sub channel (contract), or a NATS core subject without Redis.
REDIS_PROGRESS_CHANNEL_PREFIX: Final = "langgraph:stream:"
NATS_PROGRESS_SUBJECT_PREFIX: Final = "agent.progress"

# CloudEvent types.
TASK_EVENT_TYPE: Final = "agent.execute"
EVENT_SOURCE: Final = "agent-fabric"
DEADLETTER_EVENT_TYPE: Final = "agent.deadletter"

# JetStream message header carrying the CloudEvent id for duplicate detection.
MSG_ID_HEADER: Final = "Nats-Msg-Id"

# Governance events: approval requests and decisions, budget alerts. Kept in their own stream so a
# subscriber that was away still gets them; each event id is its Nats-Msg-Id (duplicates dropped).
GOVERNANCE_STREAM: Final = "AGENT_GOVERNANCE"
APPROVALS_SUBJECT_PREFIX: Final = "agent.approvals"
APPROVALS_REQUESTED_SUBJECT: Final = f"{APPROVALS_SUBJECT_PREFIX}.requested"
APPROVALS_DECIDED_SUBJECT: Final = f"{APPROVALS_SUBJECT_PREFIX}.decided"
ALERTS_SUBJECT_PREFIX: Final = "agent.alerts"
BUDGET_ALERT_SUBJECT: Final = f"{ALERTS_SUBJECT_PREFIX}.budget"
GOVERNANCE_SUBJECTS: Final = (f"{APPROVALS_SUBJECT_PREFIX}.>", f"{ALERTS_SUBJECT_PREFIX}.>")
APPROVAL_REQUESTED_EVENT_TYPE: Final = APPROVALS_REQUESTED_SUBJECT
APPROVAL_DECIDED_EVENT_TYPE: Final = APPROVALS_DECIDED_SUBJECT
BUDGET_ALERT_EVENT_TYPE: Final = BUDGET_ALERT_SUBJECT

# Control plane (NATS core, not stored): "policies / budgets / config changed, reload them".
# Every replica subscribes; a periodic reload from the database covers a missed message.
CONTROL_SUBJECT_PREFIX: Final = "agent.control"
CONTROL_SUBJECTS: Final = f"{CONTROL_SUBJECT_PREFIX}.*"
CONTROL_TOPICS: Final = ("policies", "budgets", "config", "instances", "agents")
# "Cancel this job" to every replica (NATS core): the one running it cancels its driver. The body
# names the job and the message it ends with: {"tenant_id", "job_id", "message"}. The database
# mark (tasks.cancel_requested_at) covers a replica that missed it.
CANCEL_SUBJECT: Final = f"{CONTROL_SUBJECT_PREFIX}.cancel"

# HTTP response header naming the tenant's SANDBOX/LIVE mode (seed 000, requirement 7.5).
MODE_HEADER: Final = "X-Fabric-Mode"


def task_subject(priority: str) -> str:
    return f"{TASK_SUBJECT_PREFIX}.{priority}"


def consumer_name(priority: str) -> str:
    """The durable pull consumer for one priority class (KEDA reads its pending count)."""
    return f"{CONSUMER_BASE}-{priority}"


def status_subject(status: str) -> str:
    return f"{STATUS_SUBJECT_PREFIX}.{status}"


def status_event_type(status: str) -> str:
    return f"{STATUS_SUBJECT_PREFIX}.{status}"


def control_subject(topic: str) -> str:
    return f"{CONTROL_SUBJECT_PREFIX}.{topic}"


def approval_requeue_msg_id(approval_id: str) -> str:
    """The Nats-Msg-Id of an approved task put back on agent.execute.* (not the original event's id,
    which the stream's duplicate window may still hold)."""
    return f"approval/{approval_id}/approved"


def dependency_release_msg_id(tenant_id: str, job_id: str) -> str:
    """The Nats-Msg-Id of a task put back on agent.execute.* once its dependencies completed (a task
    leaves `waiting` once, so this id is used once)."""
    return f"dependencies/{tenant_id}/{job_id}/released"


def redis_progress_channel(job_id: str) -> str:
    return f"{REDIS_PROGRESS_CHANNEL_PREFIX}{job_id}"


def nats_progress_subject(tenant_id: str, job_id: str) -> str:
    # '.' separates NATS subject tokens and may appear in ids, so it is percent-encoded.
    return f"{NATS_PROGRESS_SUBJECT_PREFIX}.{_token(tenant_id)}.{_token(job_id)}"


def _token(value: str) -> str:
    return value.replace("%", "%25").replace(".", "%2E")


# Control broadcasts between replicas (core NATS, not stored).
AUTH_CONTROL_SUBJECT: Final = "agent.control.auth"


# Agent Zero session events (core NATS, not stored here: the database keeps the replayable copy).
# Whichever replica sends a session's message publishes; whichever holds its WebSocket relays.
AGENT_SESSION_SUBJECT_PREFIX: Final = "agent.sessions"


def agent_session_subject(session_id: str) -> str:
    return f"{AGENT_SESSION_SUBJECT_PREFIX}.{_token(session_id)}"


# NATS message headers of the task door (issue 15): the publisher's credential, as over HTTP
# (`Bearer <JWT>` or `Bearer af_...`, an API key), and the seal the fabric puts on what it
# publishes itself (HTTP submissions, approved and released tasks, replica broadcasts).
AUTHORIZATION_HEADER: Final = "Authorization"
SEAL_HEADER: Final = "Agent-Fabric-Seal"

# Agents the fabric manages (agents/). Each registered agent owns the subjects under its namespace
# (`agent.<agent_id>.>`: heartbeats, logs, metrics it reports) and receives control messages
# (configuration changes) on `agent.control.agents.<agent_id>`, which the AGENT_CONTROL stream
# keeps so an agent that was away reads the latest one. Agent ids are `{agent_type}-{uuid}` and
# never equal the fixed second tokens above (execute, status, control, ...).
AGENT_NAMESPACE_PREFIX: Final = "agent"
AGENT_CONTROL_STREAM: Final = "AGENT_CONTROL"
AGENT_CONTROL_PREFIX: Final = f"{CONTROL_SUBJECT_PREFIX}.agents"
AGENT_CONTROL_SUBJECTS: Final = f"{AGENT_CONTROL_PREFIX}.>"
AGENT_CONFIG_EVENT_TYPE: Final = "agent.config.changed"
# Topics an agent package names (findings, subscriptions) are scoped by tenant on the wire, so
# two tenants running the same package never read each other's findings.
TENANT_TOPIC_PREFIX: Final = "tenant"


def agent_namespace(agent_id: str) -> str:
    """The subjects one agent may publish and subscribe on: `agent.<agent_id>.>`."""
    return f"{AGENT_NAMESPACE_PREFIX}.{_token(agent_id)}.>"


def agent_heartbeat_subject(agent_id: str) -> str:
    return f"{AGENT_NAMESPACE_PREFIX}.{_token(agent_id)}.heartbeat"


def agent_control_subject(agent_id: str) -> str:
    return f"{AGENT_CONTROL_PREFIX}.{_token(agent_id)}"


def agent_last_control_request(agent_id: str) -> str:
    """JetStream direct get of the agent's latest control message (AGENT_CONTROL allows direct)."""
    return f"$JS.API.DIRECT.GET.{AGENT_CONTROL_STREAM}.{agent_control_subject(agent_id)}"


def tenant_topic(tenant_id: str, topic: str) -> str:
    """A package's topic as one tenant's agents see it on NATS: `tenant.<tenant_id>.<topic>`."""
    return f"{TENANT_TOPIC_PREFIX}.{_token(tenant_id)}.{topic}"


# The LLM gateway refused a running task's call past a LIVE hard limit: the replica running the
# task ends it failed (core NATS, like the cancel broadcast).
TASK_FAIL_SUBJECT: Final = f"{CONTROL_SUBJECT_PREFIX}.fail"
# Gateway keys revoked (their SHA-256 hashes): every replica drops them from its key cache.
LLM_KEYS_REVOKED_SUBJECT: Final = f"{CONTROL_SUBJECT_PREFIX}.llm_keys"
# Process agents (agents/lifecycle.py). An agent whose processes failed for good (crash loop) or
# changed status raises an alert in the governance stream (kept, audited). Start/stop/restart asked
# of one replica is broadcast on the control subject so every replica's processes follow (core NATS).
AGENT_ALERT_SUBJECT: Final = f"{ALERTS_SUBJECT_PREFIX}.agents"
AGENT_ALERT_EVENT_TYPE: Final = AGENT_ALERT_SUBJECT
AGENT_PROCESS_CONTROL_SUBJECT: Final = f"{CONTROL_SUBJECT_PREFIX}.processes"
