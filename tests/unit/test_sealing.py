"""Stored secrets are sealed: unreadable without the master secret, tamper-evident, bound to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from agent_fabric.security.sealing import SealedSecretError, Sealer, sealer_for
from agent_fabric.settings import SecuritySettings, Settings

MASTER = "m" * 40


def test_seal_and_open_round_trip() -> None:
    sealer = Sealer(MASTER)
    sealed = sealer.seal("a0-key-123")
    assert sealed.startswith("sealed:v1:") and "a0-key-123" not in sealed
    assert sealer.seal("a0-key-123") != sealed  # a fresh IV each time: equal keys do not look equal
    assert sealer.open(sealed) == "a0-key-123"


def test_another_master_secret_or_a_changed_byte_cannot_open() -> None:
    sealed = Sealer(MASTER).seal("a0-key-123")
    with pytest.raises(SealedSecretError, match="another master secret"):
        Sealer("n" * 40).open(sealed)
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(SealedSecretError):
        Sealer(MASTER).open(tampered)
    with pytest.raises(SealedSecretError, match="not sealed"):
        Sealer(MASTER).open("a0-key-123")


def test_master_is_secrets_key_else_the_jwt_secret(tmp_path: Path) -> None:
    jwt_only = Settings(state_dir=tmp_path, jwt=SecuritySettings(secret=SecretStr(MASTER)))
    both = Settings(state_dir=tmp_path, jwt=SecuritySettings(secret=SecretStr(MASTER)), secrets_key=SecretStr("k" * 32))
    sealed = sealer_for(jwt_only).seal("x")
    assert Sealer(MASTER).open(sealed) == "x"
    with pytest.raises(SealedSecretError):
        sealer_for(both).open(sealed)
    with pytest.raises(ValueError, match="SECRETS_KEY must be at least 32"):
        Settings(state_dir=tmp_path, secrets_key=SecretStr("short"))
