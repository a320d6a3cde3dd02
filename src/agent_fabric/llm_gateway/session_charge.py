"""Charging an Agent Zero session for the model calls made while it answers.

Agent Zero has one model configuration per instance, so its calls carry the instance's key and
nothing that names the chat they serve. A call is charged to a session (its
`estimated_cost_usd`, and the call's audit entry names it) when exactly one session of the key's
tenant is answering on the key's instance at the time; with none or several, it counts on the
tenant's and agent's budgets only.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.llm_gateway.keys import KeyGrant
from agent_fabric.storage.tables import agent_sessions


async def charge_answering_session(engine: AsyncEngine, grant: KeyGrant, cost_usd: float) -> str | None:
    """The id of the session charged, or None."""
    if grant.instance_url is None:
        return None
    s = agent_sessions.c
    async with engine.begin() as conn:
        answering = (
            (
                await conn.execute(
                    select(s.id)
                    .where(s.tenant_id == grant.tenant_id, s.instance_url == grant.instance_url, s.busy.is_(True))
                    .limit(2)
                )
            )
            .scalars()
            .all()
        )
        if len(answering) != 1:
            return None
        if cost_usd:
            await conn.execute(
                update(agent_sessions)
                .where(s.id == answering[0])
                .values(estimated_cost_usd=s.estimated_cost_usd + cost_usd)
            )
    return str(answering[0])
