"""NKey pairs and NATS decentralised-auth JWTs made in a test, the way `nsc` would issue them.

An NKey is an Ed25519 key pair; its seed and public key are the `nkeys` package's base32 encodings
(prefix byte naming the role, the 32 key bytes, a CRC-16). A NATS JWT is `header.claims.signature`
in unpadded base64url, header `{"typ":"JWT","alg":"ed25519-nkey"}`, signed with the issuer's seed:
the operator signs itself and its accounts, an account signs its users. A `.creds` file carries a
user JWT and that user's seed between the fixed markers nats-py and the other clients look for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import nkeys

# Account limits that leave everything open and enable JetStream (any storage limit but 0 does).
OPEN_ACCOUNT_LIMITS = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


@dataclass(frozen=True)
class NKey:
    seed: str
    public: str

    def sign(self, data: bytes) -> bytes:
        pair = nkeys.from_seed(bytearray(self.seed.encode()))
        try:
            return bytes(pair.sign(data))
        finally:
            pair.wipe()


def new_key(prefix: int) -> NKey:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(bytearray(seed))
    public = pair.public_key.decode()
    pair.wipe()
    return NKey(seed.decode(), public)


def new_user_key() -> NKey:
    return new_key(nkeys.PREFIX_BYTE_USER)


def new_account_key() -> NKey:
    return new_key(nkeys.PREFIX_BYTE_ACCOUNT)


def new_operator_key() -> NKey:
    return new_key(nkeys.PREFIX_BYTE_OPERATOR)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(issuer: NKey, subject: str, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "sub": subject, "name": name}
    claims["nats"] = {**nats, "version": 2}
    # The claim id is a hash of the claims without it (base32, as the Go library does).
    unsigned = json.dumps({**claims, "jti": ""}, separators=(",", ":"), sort_keys=True).encode()
    claims["jti"] = base64.b32encode(hashlib.sha256(unsigned).digest()).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    signature = _b64(issuer.sign(f"{header}.{body}".encode()))
    return f"{header}.{body}.{signature}"


def operator_jwt(operator: NKey) -> str:
    return encode_jwt(operator, operator.public, "test-operator", {"type": "operator"})


def account_jwt(operator: NKey, account: NKey, name: str, *, jetstream: bool = True) -> str:
    """An account; the system account must be issued with `jetstream=False` (the server refuses it)."""
    limits = OPEN_ACCOUNT_LIMITS if jetstream else {**OPEN_ACCOUNT_LIMITS, "mem_storage": 0, "disk_storage": 0}
    nats = {"type": "account", "limits": limits, "default_permissions": {"pub": {}, "sub": {}}}
    return encode_jwt(operator, account.public, name, nats)


def user_jwt(account: NKey, user: NKey, name: str) -> str:
    nats = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    return encode_jwt(account, user.public, name, nats)


def creds_file_text(jwt: str, seed: str) -> str:
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )
