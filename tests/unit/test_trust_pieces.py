"""Pure pieces of issue 15: the internal seal, header redaction, token expiry judged at publish time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent_fabric.errors import Unauthenticated
from agent_fabric.inbound.nats_credentials import without_credentials
from agent_fabric.security.internal_seal import BROADCAST_PURPOSE, TASK_PURPOSE, InternalSeal
from agent_fabric.security.tokens import TokenService
from agent_fabric.settings import SecuritySettings, Settings


def test_seal_binds_purpose_message_id_and_body() -> None:
    seal = InternalSeal("m" * 40)
    value = seal.sign(TASK_PURPOSE, "id-1", b"body")
    assert seal.verify(value, TASK_PURPOSE, "id-1", b"body")
    assert not seal.verify(value, BROADCAST_PURPOSE, "id-1", b"body")
    assert not seal.verify(value, TASK_PURPOSE, "id-2", b"body")
    assert not seal.verify(value, TASK_PURPOSE, "id-1", b"bodY")
    assert not InternalSeal("n" * 40).verify(value, TASK_PURPOSE, "id-1", b"body")
    assert not seal.verify(None, TASK_PURPOSE, "id-1", b"body")


def test_dead_letter_headers_never_keep_credentials() -> None:
    kept = without_credentials({"authorization": "Bearer x", "Agent-Fabric-Seal": "v1:y", "Nats-Msg-Id": "z"})
    assert kept == {"authorization": "[redacted]", "Agent-Fabric-Seal": "[redacted]", "Nats-Msg-Id": "z"}
    assert without_credentials(None) is None


async def test_token_expiry_is_judged_when_the_message_was_published(tmp_path: Path) -> None:
    tokens = TokenService(Settings(state_dir=tmp_path, jwt=SecuritySettings(secret="s" * 40)))
    token = tokens.issue(role="agent", subject="bot", tenant_id="pod-1", ttl_seconds=60)
    later = time.time() + 3600
    assert (await tokens.verify(token, at=time.time())).subject == "bot"  # published in time, consumed whenever
    with pytest.raises(Unauthenticated, match="expired when the message was published"):
        await tokens.verify(token, at=later)
    assert (await tokens.verify(token)).tenant_id == "pod-1"
