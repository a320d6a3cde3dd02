"""What every multi-process test starts its `agent-fabric serve` replicas with."""

from __future__ import annotations

import pytest

from tests.support.serve import JWT_SECRET


@pytest.fixture
def replica_env(nats_url: str, postgres_url: str, redis_url: str) -> dict[str, str]:
    """Replicas on one NATS, one Postgres, one Redis; a short ack wait so a killed replica's task
    comes back fast, and short sweeps so approvals and dependencies move within a second."""
    return {
        "AGENT_FABRIC_NATS_URL": nats_url,
        "AGENT_FABRIC_DATABASE_URL": postgres_url,
        "AGENT_FABRIC_REDIS_URL": redis_url,
        "AGENT_FABRIC_NATS_ACK_WAIT_SECONDS": "3",
        "AGENT_FABRIC_JWT_SECRET": JWT_SECRET,
        "AGENT_FABRIC_LOG_JSON": "true",
        "AGENT_FABRIC_APPROVAL_SWEEP_SECONDS": "0.5",
        "AGENT_FABRIC_SCHED_SWEEP_SECONDS": "0.5",
    }
