"""Broadcasts between replicas go through one channel: sealed out, checked in. A message without
the seal, with a forged one, or with a seal made for another subject (a sealed broadcast replayed
elsewhere) never reaches the handler, and leaves a warning naming the broadcast."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from agent_fabric import names
from agent_fabric.security.internal_seal import InternalSeal
from agent_fabric.security.replica_channel import ReplicaChannel


async def test_only_sealed_broadcasts_reach_the_handler(nc: Client, caplog: pytest.LogCaptureFixture) -> None:
    seal = InternalSeal("x" * 40)
    channel = ReplicaChannel(nc, seal)
    got: list[tuple[str, bytes]] = []

    async def handler(msg: Msg) -> None:
        got.append((msg.subject, msg.data))

    await channel.subscribe("agent.control.test.*", handler, what="test")
    await channel.flush()
    replayed = seal.sign("broadcast", "agent.control.test.a", b"three")
    with caplog.at_level(logging.WARNING, logger="agent_fabric.security.replica_channel"):
        await channel.publish("agent.control.test.a", b"one", flush=True)
        await nc.publish("agent.control.test.a", b"two")  # no seal
        await nc.publish("agent.control.test.b", b"three", headers={names.SEAL_HEADER: replayed})
        await ReplicaChannel(nc, InternalSeal("y" * 40)).publish("agent.control.test.a", b"four", flush=True)
        await channel.publish("agent.control.test.b", b"five", flush=True)
        async with asyncio.timeout(5):
            while len(got) < 2 or len([r for r in caplog.records if "unsealed" in r.message]) < 3:
                await asyncio.sleep(0.02)
    assert got == [("agent.control.test.a", b"one"), ("agent.control.test.b", b"five")]
    warnings = [r for r in caplog.records if "unsealed" in r.message]
    assert len(warnings) == 3 and all(getattr(r, "broadcast", None) == "test" for r in warnings)
