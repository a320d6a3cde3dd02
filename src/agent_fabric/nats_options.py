"""How the fabric authenticates to NATS and secures the connection (AGENT_FABRIC_NATS_* settings).

The bundled server takes the fabric's generated user and password. An external server takes
whatever its operator issued: a user and password, a token, an NKey seed file, a credentials
(JWT) file, and TLS with a CA bundle and, for mutual TLS, a client certificate and key.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import nkeys

from agent_fabric.embedded_nats import EmbeddedNats
from agent_fabric.errors import ConfigurationError
from agent_fabric.settings import NatsSettings


def tls_context(cfg: NatsSettings) -> ssl.SSLContext | None:
    """A client TLS context when a CA or client certificate is configured (or tls://)."""
    wants_tls = cfg.tls_ca_file or cfg.tls_cert_file or (cfg.url or "").startswith("tls://")
    if not wants_tls:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file else None
    )
    if cfg.tls_cert_file:
        context.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file) if cfg.tls_key_file else None)
    return context


def _read_secret_file(path: Path, setting: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"AGENT_FABRIC_NATS_{setting}: cannot read {path}: {exc.__class__.__name__}") from None


def _check_seed(seed: str, setting: str, path: Path) -> None:
    try:
        nkeys.from_seed(bytearray(seed.strip().encode())).wipe()
    except Exception:  # nkeys raises its own errors and binascii/struct errors alike for a bad seed
        # The seed itself never reaches the message: it is the fabric's private key.
        raise ConfigurationError(f"AGENT_FABRIC_NATS_{setting}: {path} holds no valid NKey seed") from None


def check_seed_file(path: Path) -> None:
    """Fail at start-up, not at connect, when the NKey seed file is missing or holds no seed."""
    _check_seed(_read_secret_file(path, "NKEY_SEED_FILE"), "NKEY_SEED_FILE", path)


def check_creds_file(path: Path) -> None:
    """A credentials file must hold a user JWT block and a user seed block.

    nats-py reads the file line by line until it finds the JWT marker and would wait forever on a
    file without one, so the shape is checked here, before connecting.
    """
    lines = _read_secret_file(path, "CREDS_FILE").splitlines()
    blocks: dict[str, str] = {}
    for index, line in enumerate(lines[:-1]):
        for marker in ("BEGIN NATS USER JWT", "BEGIN USER NKEY SEED"):
            if marker in line:
                blocks[marker] = lines[index + 1].strip()
    if not blocks.get("BEGIN NATS USER JWT") or not blocks.get("BEGIN USER NKEY SEED"):
        raise ConfigurationError(
            f"AGENT_FABRIC_NATS_CREDS_FILE: {path} is not a NATS credentials file (user JWT and user seed blocks)"
        )
    _check_seed(blocks["BEGIN USER NKEY SEED"], "CREDS_FILE", path)


def connect_options(cfg: NatsSettings, embedded: EmbeddedNats | None) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` besides the servers."""
    if embedded is not None:
        return {"user": embedded.user, "password": embedded.password}
    options: dict[str, Any] = {}
    if cfg.user:
        options["user"] = cfg.user
    if cfg.password is not None:
        options["password"] = cfg.password.get_secret_value()
    if cfg.token is not None:
        options["token"] = cfg.token.get_secret_value()
    if cfg.nkey_seed_file:
        check_seed_file(cfg.nkey_seed_file)
        options["nkeys_seed"] = str(cfg.nkey_seed_file)
    if cfg.creds_file:
        check_creds_file(cfg.creds_file)
        options["user_credentials"] = str(cfg.creds_file)
    context = tls_context(cfg)
    if context is not None:
        options["tls"] = context
        if cfg.tls_hostname:
            options["tls_hostname"] = cfg.tls_hostname
    return options
