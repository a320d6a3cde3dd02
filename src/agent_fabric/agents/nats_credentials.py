"""An agent's own NATS credentials on the bundled server, for the process runtime to hand to its
processes (AGENT_NATS_URL, AGENT_NATS_USER, AGENT_NATS_PASSWORD, ...): the user and sealed
password registration created (agents/nats_users.py), opened here. With an external NATS server
there are none: operators issue them, and the agent's configuration `env` can carry them."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric import names
from agent_fabric.agents.nats_users import NatsUsers, inbox_prefix
from agent_fabric.security.sealing import SealedSecretError, Sealer
from agent_fabric.storage.agent_tables import agents

log = logging.getLogger(__name__)


class NatsCredentials:
    def __init__(self, engine: AsyncEngine, users: NatsUsers, sealer: Sealer) -> None:
        self._engine = engine
        self._users = users
        self._sealer = sealer

    async def for_agent(self, agent_id: str) -> dict[str, str] | None:
        if not self._users.manages_users:
            return None
        async with self._engine.connect() as conn:
            sealed = (await conn.execute(select(agents.c.nats_password).where(agents.c.id == agent_id))).scalar()
        if not sealed:
            return None
        try:
            password = self._sealer.open(str(sealed))
        except SealedSecretError as exc:
            log.warning("agent NATS password unreadable", extra={"agent_id": agent_id, "error": str(exc)})
            return None
        return {
            "url": self._users.server_url,
            "user": agent_id,
            "password": password,
            "inbox_prefix": inbox_prefix(agent_id),
            "control_subject": names.agent_control_subject(agent_id),
        }
