"""The CLI an operator and an init container use: migrate, run-migrations.sh, setup-streams, submit, status, cancel."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import nats
import pytest

from agent_fabric import names
from tests.support import services
from tests.support.serve import JWT_SECRET, ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_FABRIC_")}
    clean["PATH"] = f"{Path(sys.executable).parent}:{clean.get('PATH', '')}"
    return subprocess.run(args, env={**clean, **env}, capture_output=True, text=True, timeout=60)


def test_run_migrations_script_creates_the_schema_and_fails_loudly(tmp_path: Path) -> None:
    name = services.throwaway_name()

    async def create() -> None:
        conn = await asyncpg.connect(services.POSTGRES_DSN)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    async def tables_and_drop() -> set[str]:
        conn = await asyncpg.connect(services.with_database(services.POSTGRES_DSN, name))
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        await conn.close()
        admin = await asyncpg.connect(services.POSTGRES_DSN)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
        return {r["tablename"] for r in rows}

    asyncio.run(create())
    url = services.asyncpg_url(services.with_database(services.POSTGRES_DSN, name))
    script = str(ROOT / "scripts" / "ci" / "run-migrations.sh")
    first = run(["bash", script], {"AGENT_FABRIC_DATABASE_URL": url})
    again = run(["bash", script], {"AGENT_FABRIC_DATABASE_URL": url})
    assert first.returncode == 0, first.stderr
    assert again.returncode == 0 and "head" in again.stdout
    assert {"tasks", "task_events", "checkpoints", "dead_letters", "alembic_version"} <= asyncio.run(tables_and_drop())

    unset = run(["bash", script], {})
    assert unset.returncode != 0 and "AGENT_FABRIC_DATABASE_URL" in unset.stderr
    unreachable = run(["bash", script], {"AGENT_FABRIC_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none"})
    assert unreachable.returncode == 1 and "migration failed" in unreachable.stderr


def test_setup_streams_creates_the_topology_idempotently(nats_url: str) -> None:
    env = {"AGENT_FABRIC_NATS_URL": nats_url}
    for _ in range(2):
        result = run([sys.executable, "-m", "agent_fabric", "setup-streams"], env)
        assert result.returncode == 0, result.stderr

    async def check() -> list[str]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        consumers = [c.name for c in await js.consumers_info(names.TASK_STREAM)]
        await nc.close()
        return sorted(consumers)

    assert asyncio.run(check()) == sorted(names.consumer_name(p) for p in names.PRIORITIES)
    missing = run([sys.executable, "-m", "agent_fabric", "setup-streams"], {})
    assert missing.returncode == 2 and "AGENT_FABRIC_NATS_URL" in missing.stderr


def test_submit_and_status_talk_to_the_api(tmp_path: Path, nats_url: str) -> None:
    env = {"AGENT_FABRIC_NATS_URL": nats_url, "AGENT_FABRIC_JWT_SECRET": JWT_SECRET}
    server = ServeProcess(tmp_path / "s", env).start()
    try:
        job = f"cli-{uuid.uuid4().hex[:8]}"
        task_file = tmp_path / "task.json"
        task_file.write_text(
            json.dumps(
                {
                    "job_id": job,
                    "agent_definition": {"runtime": "builtin"},
                    "task": {"type": "echo", "input": {"via": "cli"}},
                }
            )
        )
        cli_env = {**env, "AGENT_FABRIC_URL": server.url, "AGENT_FABRIC_STATE_DIR": str(tmp_path / "s")}
        submitted = run([sys.executable, "-m", "agent_fabric", "submit", str(task_file)], cli_env)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert json.loads(submitted.stdout)["job_id"] == job
        for _ in range(50):
            status = run([sys.executable, "-m", "agent_fabric", "status", job], cli_env)
            if json.loads(status.stdout).get("status") == "completed":
                break
        assert json.loads(status.stdout)["result"] == {"via": "cli"}
        missing = run([sys.executable, "-m", "agent_fabric", "status", "no-such-job"], cli_env)
        assert missing.returncode == 1 and json.loads(missing.stdout)["status"] == 404
        finished = run([sys.executable, "-m", "agent_fabric", "cancel", job], cli_env)
        assert finished.returncode == 1 and json.loads(finished.stdout)["code"] == "task_finished"
        sleeper = {"job_id": f"{job}-z", "agent_definition": {"runtime": "builtin"}}
        task_file.write_text(json.dumps({**sleeper, "task": {"type": "sleep", "input": {"seconds": 60}}}))
        assert run([sys.executable, "-m", "agent_fabric", "submit", str(task_file)], cli_env).returncode == 0
        stopped = run([sys.executable, "-m", "agent_fabric", "cancel", f"{job}-z", "--reason", "cli"], cli_env)
        assert stopped.returncode == 0 and json.loads(stopped.stdout)["cancel_requested"] is True
    finally:
        server.stop()
