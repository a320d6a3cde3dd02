"""`agent-fabric agents ...` against a running `agent-fabric serve` on its embedded defaults
(bundled nats-server with authentication, SQLite): discover, tokens, register, show, list,
config, delete; and one clear line, never a traceback, when something is wrong."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.support.agent_packages import good_values, write_package
from tests.support.serve import JWT_SECRET, ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_FABRIC_")}
    return subprocess.run(
        [sys.executable, "-m", "agent_fabric", "agents", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_agents_cli_against_a_running_fabric(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    write_package(packages, "security", **good_values("CliSec"))
    write_package(packages, "broken", **{**good_values("CliBroken"), "DEFAULT_FINDINGS_TOPIC": "agent.status.x"})
    state = tmp_path / "state"
    server = ServeProcess(state, {"AGENT_FABRIC_AGENTS_DIR": str(packages)}).start()
    env = {"AGENT_FABRIC_URL": server.url, "AGENT_FABRIC_STATE_DIR": str(state), "AGENT_FABRIC_JWT_SECRET": JWT_SECRET}
    try:
        report = ok(cli(["discover"], env))
        statuses = {Path(p["path"]).name: p["status"] for p in report["packages"]}
        assert statuses == {"security": "known", "broken": "broken"}  # the start-up scan found it first
        listed = ok(cli(["list", "--status", "discovered"], env))
        assert [a["name"] for a in listed["items"]] == ["CliSec"]

        minted = ok(cli(["tokens", "create", "--tenant", "pod-cli", "--note", "e2e"], env))
        anonymous = {"AGENT_FABRIC_URL": server.url, "AGENT_FABRIC_STATE_DIR": str(tmp_path / "elsewhere")}
        args = ["register", "--name", "CliSec", "--version", "1.0.0", "--type", "security"]
        registered = ok(cli([*args, "--discovery-token", minted["discovery_token"]], anonymous))
        agent_id = registered["agent"]["agent_id"]
        assert registered["agent"]["tenant_id"] == "pod-cli" and registered["nats"]["available"] is True
        one_clear_line(cli([*args, "--discovery-token", minted["discovery_token"]], anonymous), "refused", "used")
        assert ok(cli(["tokens", "list", "--tenant", "pod-cli"], env))["items"][0]["used_by_agent"] == agent_id

        agent_token = registered["credentials"]["access_token"]
        shown = ok(cli(["show", agent_id, "--token", agent_token], env))
        assert [h["to"] for h in shown["history"]] == ["discovered", "registered"]
        changed = ok(cli(["config", agent_id, "--set", "log_level=DEBUG", "--set", "max_concurrent_tasks=2"], env))
        assert changed["config"]["log_level"] == {"value": "DEBUG", "source": "agent"}
        assert changed["config"]["max_concurrent_tasks"]["value"] == 2
        one_clear_line(cli(["config", agent_id, "--set", "log_level=LOUD"], env), "422", "invalid_config")
        assert len(ok(cli(["config", agent_id, "--history"], env))["versions"]) == 1

        creds = registered["nats"]

        async def agent_connects() -> None:
            nc = await nats.connect(creds["servers"], user=creds["user"], password=creds["password"])
            await nc.close()

        asyncio.run(agent_connects())

        one_clear_line(cli(["list", "--token", "not-a-jwt"], env), "refused the credentials")
        one_clear_line(cli(["show", "security-missing"], env), "404")
        ok_delete = cli(["delete", agent_id], env)
        assert ok_delete.returncode == 0, ok_delete.stderr
    finally:
        server.stop()
    one_clear_line(cli(["list"], env), "cannot reach the fabric", server.url)
