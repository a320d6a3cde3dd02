"""The agent registry and discovery on real SQLite and Postgres: packages found, broken ones
reported and never recorded, lifecycle moves with history, the schema matching the migration."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.agents.discovery import Discovery
from agent_fabric.agents.registry import AgentRegistry
from agent_fabric.agents.states import AgentStatus
from agent_fabric.errors import Conflict, NotFound
from agent_fabric.settings import DatabaseSettings, Settings
from agent_fabric.storage.agent_tables import agents
from agent_fabric.storage.engine import create_engine, migrate_async
from agent_fabric.storage.tables import audit_log, metadata
from tests.support.agent_packages import good_values, write_package


@pytest.fixture
async def engine(backend: str, tmp_path: Path, postgres_url: str) -> AsyncIterator[AsyncEngine]:
    settings = Settings(
        state_dir=tmp_path, database=DatabaseSettings(url=postgres_url if backend == "postgres" else None)
    )
    await migrate_async(settings)
    eng = create_engine(settings)
    yield eng
    await eng.dispose()


@pytest.fixture
def registry(engine: AsyncEngine) -> AgentRegistry:
    return AgentRegistry(engine, lambda _tenant: "SANDBOX")


async def test_discovery_records_good_packages_and_reports_broken_ones(
    registry: AgentRegistry, engine: AsyncEngine, tmp_path: Path
) -> None:
    name = f"Sec-{uuid.uuid4().hex[:8]}"
    root = tmp_path / "agents"
    good = write_package(root, "good", **good_values(name))
    broken_values = {**good_values(name + "-b"), "AGENT_VERSION": "1.0", "DEFAULT_FINDINGS_TOPIC": "agent.status.x"}
    broken = write_package(root, "broken", **broken_values)
    discovery = Discovery(registry, [root, tmp_path / "absent"], "0.1.0")

    report = await discovery.scan()

    by_path = {p.path: p for p in report.packages}
    assert by_path[good.resolve()].status == "discovered"
    assert by_path[broken.resolve()].status == "broken"
    assert {p.field for p in by_path[broken.resolve()].problems} == {"AGENT_VERSION", "DEFAULT_FINDINGS_TOPIC"}
    agent_id = by_path[good.resolve()].agent_id
    assert agent_id is not None and agent_id.startswith("security-")
    record = await registry.get(agent_id)
    assert record is not None
    assert record.status is AgentStatus.DISCOVERED and record.tenant_id is None
    assert record.package_path == good.resolve() and record.argv == ["./run.sh", "--once"]
    assert record.subscribed_topics == ("logs.security", "logs.auth")
    async with engine.connect() as conn:
        names = {r.name for r in await conn.execute(select(agents.c.name).where(agents.c.name.like(f"{name}%")))}
        audited = (
            await conn.execute(
                select(audit_log.c.action).where(audit_log.c.request["agent_id"].as_string() == agent_id)
            )
        ).all()
    assert names == {name}  # the broken package never registers
    assert [a.action for a in audited] == ["agent.discovered"]

    again = await discovery.scan()
    assert {p.path: p.status for p in again.packages}[good.resolve()] == "known"
    assert len(await registry.with_package(name, "1.0.0")) == 1

    shutil.rmtree(good)
    gone = await discovery.scan()
    assert gone.forgotten == [agent_id]
    assert await registry.get(agent_id) is None


async def test_a_second_package_with_a_known_name_and_version_is_a_conflict(
    registry: AgentRegistry, tmp_path: Path
) -> None:
    name = f"Dup-{uuid.uuid4().hex[:8]}"
    first = Discovery(registry, [tmp_path / "one"], "0.1.0")
    write_package(tmp_path / "one", "pkg", **good_values(name))
    assert (await first.scan()).packages[0].status == "discovered"

    second = Discovery(registry, [tmp_path / "two"], "0.1.0")
    write_package(tmp_path / "two", "pkg", **good_values(name))
    report = await second.scan()
    assert report.packages[0].status == "broken"
    assert "already known from the package" in report.packages[0].problems[0].message


async def test_lifecycle_moves_are_recorded_and_senseless_ones_refused(registry: AgentRegistry, tmp_path: Path) -> None:
    write_package(tmp_path / "agents", "pkg", **good_values(f"Life-{uuid.uuid4().hex[:8]}"))
    report = await Discovery(registry, [tmp_path / "agents"], "0.1.0").scan()
    agent_id = report.packages[0].agent_id
    assert agent_id is not None

    with pytest.raises(Conflict) as refused:
        await registry.transition(agent_id, AgentStatus.RUNNING, reason="start", actor="test")
    assert refused.value.code == "invalid_transition"

    await registry.transition(agent_id, AgentStatus.REGISTERED, reason="registered by test", actor="test")
    running = await registry.transition(agent_id, AgentStatus.RUNNING, reason="pid 42", actor="runtime")
    assert running.status is AgentStatus.RUNNING and running.status_reason == "pid 42"
    with pytest.raises(Conflict) as busy:
        await registry.delete(agent_id, tenant_id=None, actor="test")
    assert busy.value.code == "agent_running"
    await registry.transition(agent_id, AgentStatus.FAILED, reason="exit 1", actor="runtime")
    await registry.transition(agent_id, AgentStatus.RUNNING, reason="restart", actor="runtime")
    await registry.transition(agent_id, AgentStatus.STOPPED, reason="stopped by operator", actor="op")

    history = await registry.history(agent_id)
    assert [(h.from_status, h.to_status, h.reason) for h in history] == [
        (None, "discovered", f"package found at {report.packages[0].path}"),
        ("discovered", "registered", "registered by test"),
        ("registered", "running", "pid 42"),
        ("running", "failed", "exit 1"),
        ("failed", "running", "restart"),
        ("running", "stopped", "stopped by operator"),
    ]
    assert all(h.at.tzinfo is not None for h in history)
    assert [h.at for h in history] == sorted(h.at for h in history)

    with pytest.raises(NotFound):
        await registry.delete(agent_id, tenant_id="another-tenant", actor="test")
    await registry.delete(agent_id, tenant_id=None, actor="test")
    assert await registry.get(agent_id) is None


async def test_the_migration_creates_exactly_the_agent_tables(engine: AsyncEngine) -> None:
    def diff(sync_conn: object) -> list[object]:
        context = MigrationContext.configure(sync_conn)  # type: ignore[arg-type]
        return [d for d in compare_metadata(context, metadata) if "agent" in repr(d)]

    async with engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []
