"""Where the real services are: environment first (docker compose), local defaults otherwise."""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlsplit, urlunsplit

POSTGRES_DSN = os.environ.get("AGENT_FABRIC_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("AGENT_FABRIC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
EXTERNAL_NATS_URL = os.environ.get("AGENT_FABRIC_TEST_NATS_URL")


def require_reachable(url: str, default_port: int, what: str) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        raise RuntimeError(
            f"{what} at {host}:{port} is not reachable ({exc}); run `bash scripts/services.sh`"
        ) from None


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def asyncpg_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


def throwaway_name() -> str:
    return f"af_test_{uuid.uuid4().hex[:10]}"
