"""Fixtures over real services: a fresh nats-server per test, a throwaway Postgres database per
session, the machine's Redis. Nothing here is a fake: a missing service fails loudly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from fastapi import FastAPI

from agent_fabric.app import create_app
from agent_fabric.fabric import Fabric
from agent_fabric.settings import (
    DatabaseSettings,
    NatsSettings,
    OutboundSettings,
    RedisSettings,
    SecuritySettings,
    Settings,
)
from agent_fabric.storage.engine import migrate_async
from tests.support import services
from tests.support.nats_server import running_nats_server

JWT_SECRET = "test-secret-0123456789-abcdefghijklmnop"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(url, monitoring port) of a fresh JetStream server, so stream names never collide."""
    with running_nats_server(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def nats_url(nats_server: tuple[str, int]) -> str:
    return nats_server[0]


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A throwaway database, migrated, dropped at the end of the session."""
    services.require_reachable(services.POSTGRES_DSN, 5432, "PostgreSQL")
    name = services.throwaway_name()
    admin = await asyncpg.connect(services.POSTGRES_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = services.asyncpg_url(services.with_database(services.POSTGRES_DSN, name))
    await migrate_async(Settings(database=DatabaseSettings(url=url)))
    try:
        yield url
    finally:
        admin = await asyncpg.connect(services.POSTGRES_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    services.require_reachable(services.REDIS_URL, 6379, "Redis")
    return services.REDIS_URL


def make_settings(
    state_dir: Path, nats_url: str, *, database_url: str | None = None, redis_url: str | None = None, **overrides: Any
) -> Settings:
    nats_over = overrides.pop("nats", {})
    worker = overrides.pop("worker", None)
    kwargs: dict[str, Any] = dict(
        state_dir=state_dir,
        log_json=False,
        nats=NatsSettings(url=nats_url, **nats_over),
        database=DatabaseSettings(url=database_url, auto_migrate=True),
        redis=RedisSettings(url=redis_url),
        jwt=SecuritySettings(secret=JWT_SECRET),
        shutdown_grace_seconds=5,
        # Agent Zero stand-ins listen on 127.0.0.1: the operator setting that opens loopback to
        # tenant-registered URLs (the default refuses it; tests/integration/test_outbound_urls.py).
        outbound=OutboundSettings(allowed_ranges="127.0.0.0/8,::1/128"),
    )
    if worker is not None:
        kwargs["worker"] = worker
    kwargs.update(overrides)
    return Settings(**kwargs)


class RunningApp:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def fabric(self) -> Fabric:
        fabric: Fabric = self.app.state.fabric
        return fabric

    def token(self, role: str = "admin", tenant: str | None = None) -> str:
        return self.fabric.tokens.issue(role=role, subject="test", tenant_id=tenant)

    def auth(self, role: str = "admin", tenant: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, tenant)}"}


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[RunningApp]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fabric.test", timeout=30) as client:
            yield RunningApp(app, client)


AppFactory = Callable[..., AbstractAsyncContextManager[RunningApp]]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def fabric_app(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str
) -> AsyncIterator[RunningApp]:
    """The app on SQLite + NATS progress, or on Postgres + Redis progress."""
    if backend == "postgres":
        settings = make_settings(tmp_path, nats_url, database_url=postgres_url, redis_url=redis_url)
    else:
        settings = make_settings(tmp_path, nats_url)
    async with running_app(settings) as running:
        yield running


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[nats.aio.client.Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


def new_job_id(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
