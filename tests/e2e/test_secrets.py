"""Secrets never leak: database password, JWT key, API keys and tokens stay out of logs,
error responses, readiness and metrics, even at DEBUG."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DB_PASSWORD = "Db-Pa55word-never-logged"
JWT_SECRET = "jwt-secret-never-logged-0123456789-abcdef"


def test_no_secret_reaches_logs_responses_or_metrics(tmp_path: Path, nats_url: str, postgres_url: str) -> None:
    # The local server trusts loopback connections, so a password in the URL is carried but unused.
    db_url = postgres_url.replace("postgresql+asyncpg://postgres@", f"postgresql+asyncpg://postgres:{DB_PASSWORD}@")
    server = ServeProcess(
        tmp_path / "s",
        {
            "AGENT_FABRIC_NATS_URL": nats_url,
            "AGENT_FABRIC_DATABASE_URL": db_url,
            "AGENT_FABRIC_JWT_SECRET": JWT_SECRET,
            "AGENT_FABRIC_LOG_LEVEL": "DEBUG",
        },
    ).start()
    seen: list[str] = []
    try:
        from jose import jwt

        now = int(time.time())
        admin = jwt.encode(
            {
                "sub": "ops",
                "role": "admin",
                "iss": "agent-fabric",
                "aud": "agent-fabric",
                "iat": now,
                "nbf": now,
                "exp": now + 300,
                "jti": "x",
            },
            JWT_SECRET,
            algorithm="HS256",
        )
        auth = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=server.url, timeout=10) as client:
            created = client.post(
                "/api/v1/auth/keys", json={"name": "k", "role": "agent", "tenant_id": "pod-s"}, headers=auth
            ).json()
            api_key = created["key"]
            pair = client.post("/api/v1/auth/token", json={"api_key": api_key}).json()
            secrets = [
                DB_PASSWORD,
                JWT_SECRET,
                api_key,
                api_key.split("_", 2)[2],  # af_<prefix>_<secret>: the secret itself may hold "_"
                admin,
                pair["access_token"],
                pair["refresh_token"],
            ]
            responses = [
                client.get("/ready"),
                client.get("/metrics"),
                client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {pair['access_token']}x"}),
                client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {JWT_SECRET}"}),
                client.post("/api/v1/auth/token", json={"api_key": api_key + "wrong"}),
                client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"] + "x"}),
                client.post("/api/v1/tasks", content=b"{not json " + api_key.encode(), headers=auth),
                client.post("/", content=b'{"data": "not an event"}', headers=auth),
                client.get("/api/v1/auth/keys", headers=auth),
            ]
            seen = [r.text for r in responses]
            assert all(r.status_code < 500 for r in responses), [r.status_code for r in responses]
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert '"level":"debug"' in log  # debug lines were really written, so they were checked too
    for secret in secrets:
        assert secret not in log, f"a secret reached the log: {secret[:6]}..."
        for body in seen:
            assert secret not in body
