"""Fixtures shared by the Agent Zero integration tests: a stand-in Agent Zero over real HTTP and a
fabric pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_fabric.settings import AgentZeroSettings, Settings
from tests.conftest import RunningApp, make_settings, running_app
from tests.support.agent_zero_standin import STANDIN_KEY, AgentZeroStandIn, running_standin


@pytest.fixture
def standin() -> Iterator[tuple[str, AgentZeroStandIn]]:
    """(base URL, stand-in) of an Agent Zero stand-in with the key STANDIN_KEY."""
    with running_standin(STANDIN_KEY) as served:
        yield served


def agent_zero_settings(
    tmp_path: Path, nats_url: str, url: str, db: str | None, redis: str | None, **over: Any
) -> Settings:
    """The fabric on `db`/`redis` (None: SQLite, NATS progress) with the stand-in at `url`, fast polling."""
    cfg = AgentZeroSettings(url=url, api_key=STANDIN_KEY, poll_seconds=0.1, **over)
    return make_settings(tmp_path, nats_url, database_url=db, redis_url=redis, agent_zero=cfg)


@pytest.fixture
async def fleet_app(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str, standin: tuple[str, Any]
) -> AsyncIterator[RunningApp]:
    """The fabric in front of the stand-in, on SQLite + NATS progress or Postgres + Redis."""
    db, redis = (postgres_url, redis_url) if backend == "postgres" else (None, None)
    async with running_app(agent_zero_settings(tmp_path, nats_url, standin[0], db, redis)) as app:
        yield app
