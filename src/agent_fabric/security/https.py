"""HTTPS served directly by `agent-fabric serve`: uvicorn's certificate settings from AGENT_FABRIC_TLS_*.

Behind an ingress or a service mesh, terminate TLS there instead and leave these unset (README,
"HTTPS"). With a client CA the server asks every client for a certificate and refuses the TLS
handshake without one it signed (mutual TLS); bearer tokens are still required on top.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from agent_fabric.errors import ConfigurationError
from agent_fabric.settings import TlsSettings


def uvicorn_tls(cfg: TlsSettings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run: none for plain HTTP; refuses unreadable files at start-up."""
    if cfg.cert_file is None or cfg.key_file is None:
        return {}
    for name, path in (
        ("TLS_CERT_FILE", cfg.cert_file),
        ("TLS_KEY_FILE", cfg.key_file),
        ("TLS_CLIENT_CA_FILE", cfg.client_ca_file),
    ):
        if path is not None and not Path(path).is_file():
            raise ConfigurationError(f"AGENT_FABRIC_{name}={path} is not a readable file")
    kwargs: dict[str, Any] = {"ssl_certfile": str(cfg.cert_file), "ssl_keyfile": str(cfg.key_file)}
    if cfg.client_ca_file is not None:
        kwargs |= {"ssl_ca_certs": str(cfg.client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return kwargs
