"""NATS credentials for registered agents (seed 004 section 4.3).

On the bundled nats-server (no AGENT_FABRIC_NATS_URL) every registered agent is a NATS user named
by its agent id, with a generated password (stored sealed, shown once at registration) and
permissions limited to its own subjects:

- publish:   agent.<agent_id>.>, its findings topic as `tenant.<tenant>.<topic>`, and the direct
             get of its latest control message ($JS.API.DIRECT.GET.AGENT_CONTROL.<control subject>)
- subscribe: agent.<agent_id>.>, agent.control.agents.<agent_id> (configuration changes),
             `tenant.<tenant>.<topic>` for each subscribed topic, and _INBOX.<agent_id>.> (replies,
             with the client's inbox prefix set to _INBOX.<agent_id>)

Everything else (tasks, results, other agents, JetStream's API) is refused by the server itself.
The users follow the registry: registration, a topic change in the configuration and deletion
each rewrite the server's configuration and reload it.

An external NATS server cannot take users at run time from the fabric: there, registration says
so in its `nats` member and operators issue credentials with decentralised JWT accounts or an
auth callout (README "Agents").
"""

from __future__ import annotations

import logging
from typing import Any, Final

from agent_fabric import names
from agent_fabric.agents.config import AgentConfigs
from agent_fabric.agents.registry import AgentRecord, AgentRegistry
from agent_fabric.embedded_nats import EmbeddedNats, NatsUser
from agent_fabric.security.sealing import SealedSecretError, Sealer

log = logging.getLogger(__name__)

EXTERNAL_DETAIL: Final = (
    "this fabric uses an external NATS server (AGENT_FABRIC_NATS_URL), which cannot take users at run time: "
    "issue this agent's NATS credentials with your NATS operator (decentralised JWT accounts or auth callout), "
    "allowing the subjects listed in `permissions`"
)


def inbox_prefix(agent_id: str) -> str:
    return f"_INBOX.{agent_id}"


def agent_permissions(record: AgentRecord, effective: dict[str, Any]) -> dict[str, list[str]]:
    """The subjects one agent may publish and subscribe to, from its effective configuration."""
    assert record.tenant_id is not None
    own = names.agent_namespace(record.id)
    publish = [own, names.agent_last_control_request(record.id)]
    findings = effective.get("findings_topic")
    if findings:
        publish.append(names.tenant_topic(record.tenant_id, findings))
    subscribe = [own, names.agent_control_subject(record.id), f"{inbox_prefix(record.id)}.>"]
    subscribe += [names.tenant_topic(record.tenant_id, t) for t in effective.get("subscribed_topics") or ()]
    return {"publish": publish, "subscribe": subscribe}


class NatsUsers:
    def __init__(
        self, server: EmbeddedNats | None, registry: AgentRegistry, configs: AgentConfigs, sealer: Sealer
    ) -> None:
        self._server = server
        self._registry = registry
        self._configs = configs
        self._sealer = sealer

    @property
    def server_url(self) -> str:
        """The bundled server's URL agents connect to ('' with an external server)."""
        return self._server.url if self._server is not None else ""

    @property
    def manages_users(self) -> bool:
        """Whether registration creates NATS users (the bundled server) or cannot (external)."""
        return self._server is not None

    async def sync(self) -> int:
        """Give the bundled server exactly the registered agents' users; returns how many."""
        if self._server is None:
            return 0
        users = []
        for record, sealed in await self._registry.nats_passwords():
            try:
                password = self._sealer.open(sealed)
            except SealedSecretError as exc:  # sealed under another master secret: this agent cannot connect
                log.warning("agent NATS password unreadable", extra={"agent_id": record.id, "error": str(exc)})
                continue
            perms = agent_permissions(record, (await self._configs.effective(record)).values)
            users.append(NatsUser(record.id, password, tuple(perms["publish"]), tuple(perms["subscribe"])))
        await self._server.set_users(users)
        return len(users)

    async def after_registration(self, record: AgentRecord, password: str | None) -> dict[str, Any]:
        """The `nats` member of a registration answer."""
        perms = agent_permissions(record, (await self._configs.effective(record)).values)
        if self._server is None or password is None:
            return {"available": False, "detail": EXTERNAL_DETAIL, "user": record.id, "permissions": perms}
        try:
            await self.sync()
        except Exception as exc:  # the agent is registered; its user arrives with the next sync
            log.error("NATS users not reloaded", extra={"agent_id": record.id, "error": str(exc)[:300]})
            return {
                "available": False,
                "detail": f"the bundled nats-server did not reload: {exc}",
                "permissions": perms,
            }
        return {
            "available": True,
            "servers": [self._server.url],
            "user": record.id,
            "password": password,
            "inbox_prefix": inbox_prefix(record.id),
            "control_subject": names.agent_control_subject(record.id),
            "permissions": perms,
        }

    async def refresh(self) -> None:
        """After a deletion or a topic change: the server's users follow the registry."""
        if self._server is not None:
            await self.sync()
