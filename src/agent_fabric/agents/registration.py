"""Registration: an agent (with a one-time discovery token) or an operator (directly) binds an
agent to a tenant and receives its credentials: an API key and JWT of role `agent` naming the
agent, and, on the bundled nats-server, a NATS user limited to the agent's own subjects.

Everything that must hold together commits in one transaction: the claim of the agent, the spent
token, the API key, the sealed NATS password, the audit entry. The NATS server learns the new user
right after the commit (agents/nats_users.py). What the fabric already knows it cannot do for the
agent (registration_notices.py) is in the answer's `notices`, the status reason, the audit and the log.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.agents.credentials import DiscoveryTokens, agent_subject, create_agent_key
from agent_fabric.agents.nats_users import NatsUsers
from agent_fabric.agents.registration_notices import Notice, registration_notices
from agent_fabric.agents.registry import AgentRecord, AgentRegistry, ModeFor
from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.security.sealing import Sealer
from agent_fabric.security.tokens import TokenService
from agent_fabric.settings import ProcessAgentSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    agent: AgentRecord
    api_key_id: str
    api_key: str
    access_token: str
    expires_in: int
    nats: dict[str, Any]
    notices: tuple[Notice, ...] = ()

    def view(self) -> dict[str, Any]:
        return {
            "agent": self.agent.view(),
            "credentials": {
                "api_key_id": self.api_key_id,
                "api_key": self.api_key,
                "access_token": self.access_token,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
            },
            "nats": self.nats,
            "notices": [n.view() for n in self.notices],
        }


class Registrar:
    def __init__(
        self,
        engine: AsyncEngine,
        registry: AgentRegistry,
        tokens: DiscoveryTokens,
        jwt: TokenService,
        sealer: Sealer,
        nats_users: NatsUsers,
        mode_for: ModeFor,
        access_ttl_seconds: int,
        process: ProcessAgentSettings,
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._tokens = tokens
        self._jwt = jwt
        self._sealer = sealer
        self._nats = nats_users
        self._mode_for = mode_for
        self._ttl = access_ttl_seconds
        self._process = process

    async def register(
        self,
        *,
        name: str,
        version: str,
        agent_type: str,
        actor: str,
        discovery_token: str | None = None,
        tenant_id: str | None = None,
        description: str | None = None,
    ) -> Registration:
        """With a discovery token (its tenant), or directly by an operator for `tenant_id`."""
        password = secrets.token_urlsafe(24) if self._nats.manages_users else None
        async with self._engine.begin() as conn:
            spent = await self._tokens.spend(conn, discovery_token) if discovery_token is not None else None
            tenant = spent.tenant_id if spent is not None else tenant_id
            if not tenant:
                raise ValueError("registration needs a discovery token or a tenant")
            record = await self._registry.register_in(
                conn,
                name=name,
                version=version,
                agent_type=agent_type,
                tenant_id=tenant,
                actor=actor,
                description=description,
                nats_password=self._sealer.seal(password) if password else None,
            )
            if spent is not None:
                await self._tokens.attribute(conn, spent, record.id)
            notices = registration_notices(record, self._process)
            if notices:
                record = await self._registry.note_in(conn, record.id, "; ".join(n.message for n in notices))
            assert record.tenant_id
            key = await create_agent_key(conn, record.id, record.tenant_id, actor)
            await append(
                conn,
                AuditEntry(
                    "agent.registered",
                    actor,
                    record.tenant_id,
                    self._mode_for(record.tenant_id),
                    request={
                        "agent_id": record.id,
                        "name": name,
                        "version": version,
                        "agent_type": agent_type,
                        "with_discovery_token": discovery_token is not None,
                    },
                    response={
                        "api_key_id": key.key_id,
                        "status": record.status.value,
                        "notices": [n.view() for n in notices],
                    },
                ),
            )
        access = self._jwt.issue(
            role="agent",
            subject=agent_subject(record.id),
            tenant_id=record.tenant_id,
            ttl_seconds=self._ttl,
            key_id=key.key_id,
        )
        nats = await self._nats.after_registration(record, password)
        log.info("agent registered", extra={"agent_id": record.id, "tenant_id": record.tenant_id})
        for notice in notices:
            log.warning(
                "agent registered with a notice",
                extra={
                    "agent_id": record.id,
                    "tenant_id": record.tenant_id,
                    "code": notice.code,
                    "notice": notice.message,
                },
            )
        return Registration(record, key.key_id, key.api_key, access, self._ttl, nats, tuple(notices))
