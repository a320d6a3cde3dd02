"""Broadcasts between replicas: sealed on the way out, checked on the way in, in one place.

Replicas tell each other things over core NATS (`agent.control.*`, `agent.sessions.*`):
revocations, cancellations, reloads, stopped agents, session events. Any NATS client that may
publish there could forge one, so every such message carries the fabric's seal (an HMAC under
the replicas' shared secret, security/internal_seal.py) and every subscriber drops one without
it. Publishing and subscribing only through this channel keeps a new broadcast from forgetting
either half.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agent_fabric import names
from agent_fabric.security.internal_seal import BROADCAST_PURPOSE, InternalSeal

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]


class ReplicaChannel:
    def __init__(self, nc: NatsClient, seal: InternalSeal) -> None:
        self._nc = nc
        self._seal = seal

    async def publish(self, subject: str, body: bytes, *, flush: bool = False) -> None:
        """Send to every replica; `flush`: wait until the server has it (a change others must see soon)."""
        headers = {names.SEAL_HEADER: self._seal.sign(BROADCAST_PURPOSE, subject, body)}
        await self._nc.publish(subject, body, headers=headers)
        if flush:
            await self._nc.flush(timeout=2)

    async def subscribe(self, subject: str, handler: Handler, *, what: str) -> Subscription:
        """Call `handler` with each sealed message on `subject` (wildcards allowed); `what` names
        the broadcast in the warning an unsealed message leaves."""

        async def checked(msg: Msg) -> None:
            if not self.is_sealed(msg):
                log.warning(
                    "ignored an unsealed broadcast (not from a replica)",
                    extra={"broadcast": what, "subject": msg.subject},
                )
                return
            await handler(msg)

        return await self._nc.subscribe(subject, cb=checked)

    async def flush(self) -> None:
        """Until the server has every subscription made so far (before a caller relies on one)."""
        await self._nc.flush()

    def is_sealed(self, msg: Any) -> bool:
        headers = msg.headers or {}
        return self._seal.verify(headers.get(names.SEAL_HEADER), BROADCAST_PURPOSE, msg.subject, msg.data)
