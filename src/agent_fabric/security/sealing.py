"""Secrets the fabric must keep and use later (Agent Zero API keys registered through the API),
sealed at rest: encrypted and authenticated (Fernet: AES-128-CBC + HMAC-SHA256) before they reach
the database, opened only in memory when a client is built.

The key is derived (HKDF-SHA256, its own label) from AGENT_FABRIC_SECRETS_KEY, else from the JWT
signing secret, which every replica already shares; so a database dump alone reveals no key.
Rotating the master secret makes sealed values unreadable: set SECRETS_KEY to keep them apart.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent_fabric.settings import Settings

PREFIX = "sealed:v1:"
_INFO = b"agent-fabric/sealed-secrets/v1"


class SealedSecretError(Exception):
    """A stored value that this process cannot open (another master secret, or not sealed)."""


class Sealer:
    def __init__(self, master: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(master.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, plain: str) -> str:
        return PREFIX + self._fernet.encrypt(plain.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            raise SealedSecretError("the stored value is not sealed")
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SealedSecretError("sealed with another master secret (SECRETS_KEY or JWT_SECRET differs)") from None


def sealer_for(settings: Settings) -> Sealer:
    """SECRETS_KEY if set, else the JWT signing secret (configured, or generated for embedded use)."""
    from agent_fabric.security.tokens import signing_secret  # tokens imports settings-heavy modules

    if settings.secrets_key is not None:
        return Sealer(settings.secrets_key.get_secret_value())
    return Sealer(signing_secret(settings))
