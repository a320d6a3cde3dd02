"""The seal on what the fabric publishes to itself over NATS.

Some messages the fabric reads were written by the fabric: a task accepted at the HTTP door (its
credential was checked there), an approved or released task put back on agent.execute.*, the
broadcasts between replicas (revocations, custom roles, cancellations). A publisher without the
fabric's secret must not be able to write them, so each carries `Agent-Fabric-Seal`: an
HMAC-SHA256 over its purpose, its Nats-Msg-Id and its body.

The key is derived (HKDF-SHA256, its own label) from the same master as the sealed secrets
(security/sealing.py): AGENT_FABRIC_SECRETS_KEY, else the JWT signing secret. Every replica must
share it: with an external token issuer (JWT_PUBLIC_KEY / JWKS) set SECRETS_KEY on every replica.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent_fabric.settings import Settings

_INFO = b"agent-fabric/nats-seal/v1"
TASK_PURPOSE = "task"  # a task on agent.execute.*
BROADCAST_PURPOSE = "broadcast"  # a message between replicas on agent.control.*
_VERSION = "v1:"


class InternalSeal:
    def __init__(self, master: str) -> None:
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(master.encode())

    def sign(self, purpose: str, msg_id: str, body: bytes) -> str:
        """The header value for one message. `purpose` keeps a sealed broadcast from passing as a task."""
        mac = hmac.new(self._key, f"{purpose}\n{msg_id}\n".encode(), hashlib.sha256)
        mac.update(body)
        return _VERSION + mac.hexdigest()

    def verify(self, value: str | None, purpose: str, msg_id: str, body: bytes) -> bool:
        return value is not None and hmac.compare_digest(value, self.sign(purpose, msg_id, body))


def internal_seal_for(settings: Settings) -> InternalSeal:
    """SECRETS_KEY if set, else the JWT signing secret (configured, or generated for embedded use)."""
    from agent_fabric.security.tokens import signing_secret  # tokens imports settings-heavy modules

    if settings.secrets_key is not None:
        return InternalSeal(settings.secrets_key.get_secret_value())
    return InternalSeal(signing_secret(settings))
