"""The Agent Zero session an instance key's call serves: the one answering on that instance.

Agent Zero has one model configuration per instance, so its calls carry the instance's key and
nothing that names the chat they serve. A call belongs to a session when exactly one session of
the key's tenant is answering (`busy`) on the key's instance at the time: its streamed tokens go
to that session's WebSocket, its cost to the session's `estimated_cost_usd`, and its audit entry
names it. With several answering, its cost is split among them in equal shares (nothing tells
them apart; the shares add up to the call's cost), its audit entry lists them, and its tokens go
to no WebSocket. With none, the call counts on the tenant's and agent's budgets only.
"""

from __future__ import annotations

from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric import names
from agent_fabric.llm_gateway.keys import INSTANCE, KeyGrant
from agent_fabric.security.internal_seal import InternalSeal
from agent_fabric.security.replica_channel import ReplicaChannel
from agent_fabric.storage.tables import agent_sessions

MAX_SHARING = 64  # sessions answering at once on one instance that share a call's cost


async def answering_sessions(engine: AsyncEngine, grant: KeyGrant) -> list[str]:
    """The tenant's sessions answering on the key's instance right now, by id."""
    if grant.kind != INSTANCE or grant.instance_url is None:
        return []
    s = agent_sessions.c
    async with engine.connect() as conn:
        answering = (
            await conn.execute(
                select(s.id)
                .where(s.tenant_id == grant.tenant_id, s.instance_url == grant.instance_url, s.busy.is_(True))
                .order_by(s.id)
                .limit(MAX_SHARING)
            )
        ).scalars()
        return [str(i) for i in answering]


async def answering_session(engine: AsyncEngine, grant: KeyGrant) -> str | None:
    """The one session answering on the key's instance; None when none or several are."""
    answering = await answering_sessions(engine, grant)
    return answering[0] if len(answering) == 1 else None


async def charge(engine: AsyncEngine, session_ids: list[str], cost_usd: float) -> None:
    """Add the call's cost to the sessions answering when it was made, in equal shares: an
    instance's calls name no chat, so when several answer at once none can be told from the
    others, and the shares add up to what the call cost. An increment in SQL, never read-modify-write."""
    if cost_usd and session_ids:
        share = cost_usd / len(session_ids)
        async with engine.begin() as conn:
            await conn.execute(
                update(agent_sessions)
                .where(agent_sessions.c.id.in_(session_ids))
                .values(estimated_cost_usd=agent_sessions.c.estimated_cost_usd + share)
            )


class SessionTokenSink:
    """Publishes a call's token events to the answering session's live subject (the WebSocket's
    source), looked up once, off the stream's path (the relay's pump calls it)."""

    def __init__(self, engine: AsyncEngine, nc: NatsClient, grant: KeyGrant, seal: InternalSeal) -> None:
        self._engine = engine
        self._channel = ReplicaChannel(nc, seal)
        self._grant = grant
        self._looked_up = False
        self.session_id: str | None = None

    async def publish(self, event: dict[str, Any]) -> None:
        if not self._looked_up:
            self._looked_up = True
            self.session_id = await answering_session(self._engine, self._grant)
        if self.session_id is None:
            return
        wire = {"session_id": self.session_id, "kind": event["kind"], "data": event["data"], "at": event["time"]}
        subject, body = names.agent_session_subject(self.session_id), orjson.dumps(wire)
        await self._channel.publish(subject, body)
