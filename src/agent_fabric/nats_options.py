"""How the fabric authenticates to NATS and secures the connection (AGENT_FABRIC_NATS_* settings).

The bundled server takes the fabric's generated user and password. An external server takes
whatever its operator issued: a user and password, a token, an NKey seed file, a credentials
(JWT) file, and TLS with a CA bundle and, for mutual TLS, a client certificate and key.
"""

from __future__ import annotations

import importlib.util
import ssl
from typing import Any

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
    if (cfg.nkey_seed_file or cfg.creds_file) and importlib.util.find_spec("nkeys") is None:
        # nats-py signs the server's nonce with the `nkeys` package; say so before connecting.
        raise ConfigurationError(
            "AGENT_FABRIC_NATS_NKEY_SEED_FILE / _CREDS_FILE need the nkeys package: pip install nkeys"
        )
    if cfg.nkey_seed_file:
        options["nkeys_seed"] = str(cfg.nkey_seed_file)
    if cfg.creds_file:
        options["user_credentials"] = str(cfg.creds_file)
    context = tls_context(cfg)
    if context is not None:
        options["tls"] = context
        if cfg.tls_hostname:
            options["tls_hostname"] = cfg.tls_hostname
    return options
