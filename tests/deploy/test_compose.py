"""docker-compose.test.yml: valid without a Docker engine, and consistent with the service,
the Kubernetes pod and scripts/compose-test.sh.

The `compose_smoke` tests run only inside scripts/compose-test.sh, against the started stack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.manifests import REPO_ROOT, schema_errors, settings_env_names

COMPOSE_FILE = REPO_ROOT / "docker-compose.test.yml"
COMPOSE_TEST_SH = REPO_ROOT / "scripts/compose-test.sh"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port."""
    out = {}
    for mapping in service.get("ports", []):
        parts = str(mapping).split(":")  # [ip:]host:container
        out[int(parts[-1])] = int(parts[-2])
    return out


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    # The Compose Specification's JSON schema, as vendored by check-jsonschema (test extra).
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    errors = schema_errors(compose, schema)
    assert not errors, "\n".join(errors)


def test_docker_compose_accepts_the_file() -> None:
    """`docker compose config` when the compose CLI plugin is installed (it needs no engine)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose CLI plugin is not installed here; the schema test above covers the file")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_backing_services_and_host_ports(services: dict[str, Any]) -> None:
    assert set(services) == {"nats", "postgres", "dragonfly", "agent-fabric"}
    nats = services["nats"]
    assert nats["image"].startswith("nats:2.14")
    assert "-js" in nats["command"] and nats["command"][nats["command"].index("-m") + 1] == "8222"
    assert published(nats) == {4222: 14222, 8222: 18222}
    assert services["postgres"]["image"].startswith("postgres:16")
    assert published(services["postgres"]) == {5432: 15432}
    assert services["dragonfly"]["image"].startswith("docker.dragonflydb.io/dragonflydb/dragonfly:")
    assert published(services["dragonfly"]) == {6379: 16380}
    for name, service in services.items():
        assert service["healthcheck"]["test"], f"{name} has no healthcheck"


def test_service_is_built_from_the_dockerfile_and_waits_for_its_backends(services: dict[str, Any]) -> None:
    app = services["agent-fabric"]
    assert app["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert app["depends_on"] == {name: {"condition": "service_healthy"} for name in ("nats", "postgres", "dragonfly")}
    assert "http://127.0.0.1:8080/" in " ".join(app["healthcheck"]["test"])
    # Like the Kubernetes pod: the migration script first, then the server, no auto-migrate.
    assert "/app/scripts/ci/run-migrations.sh" in " ".join(app["command"])
    assert "agent-fabric serve" in " ".join(app["command"])
    assert app["environment"]["AGENT_FABRIC_DATABASE_AUTO_MIGRATE"] == "false"


def test_service_environment(services: dict[str, Any]) -> None:
    env = services["agent-fabric"]["environment"]
    assert set(env) <= settings_env_names(), f"unknown settings: {set(env) - settings_env_names()}"
    pg = services["postgres"]["environment"]
    assert env["AGENT_FABRIC_NATS_URL"] == "nats://nats:4222"
    assert env["AGENT_FABRIC_DATABASE_URL"] == (
        f"postgresql+asyncpg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    )
    assert env["AGENT_FABRIC_REDIS_URL"] == "redis://dragonfly:6379"
    assert len(env["AGENT_FABRIC_JWT_SECRET"]) >= 32  # the settings refuse shorter keys
    assert env["AGENT_FABRIC_MODE"] in {"SANDBOX", "LIVE"}


def test_stop_grace_period_covers_the_drain(services: dict[str, Any]) -> None:
    app = services["agent-fabric"]
    grace = float(app["environment"]["AGENT_FABRIC_SHUTDOWN_GRACE_SECONDS"])
    assert seconds(app["stop_grace_period"]) == grace + 5


def exported(script: Path) -> dict[str, str]:
    return dict(re.findall(r'^export (AGENT_FABRIC_TEST_\w+)="([^"]+)"', script.read_text(), re.MULTILINE))


def test_compose_test_script_points_the_suite_at_the_published_ports(services: dict[str, Any]) -> None:
    env = exported(COMPOSE_TEST_SH)
    pg = services["postgres"]["environment"]
    assert env["AGENT_FABRIC_TEST_NATS_URL"] == f"nats://127.0.0.1:{published(services['nats'])[4222]}"
    assert env["AGENT_FABRIC_TEST_NATS_MONITORING_URL"] == f"http://127.0.0.1:{published(services['nats'])[8222]}"
    assert env["AGENT_FABRIC_TEST_POSTGRES_DSN"] == (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@127.0.0.1:"
        f"{published(services['postgres'])[5432]}/{pg['POSTGRES_DB']}"
    )
    assert env["AGENT_FABRIC_TEST_REDIS_URL"] == f"redis://127.0.0.1:{published(services['dragonfly'])[6379]}/0"
    assert env["AGENT_FABRIC_TEST_SERVICE_URL"] == f"http://127.0.0.1:{published(services['agent-fabric'])[8080]}"
    text = COMPOSE_TEST_SH.read_text()
    assert "up -d --build --wait" in text and "down -v" in text


# --- smoke tests against the running stack (scripts/compose-test.sh) ---------------------------

SERVICE_URL = os.environ.get("AGENT_FABRIC_TEST_SERVICE_URL")
smoke = pytest.mark.skipif(SERVICE_URL is None, reason="needs the compose stack (scripts/compose-test.sh)")


def admin_token(services: dict[str, Any], tmp_path: Path) -> str:
    """A token signed with the stack's test key, minted by the local CLI."""
    secret = services["agent-fabric"]["environment"]["AGENT_FABRIC_JWT_SECRET"]
    cli = Path(sys.executable).parent / "agent-fabric"
    env = {**os.environ, "AGENT_FABRIC_JWT_SECRET": secret, "AGENT_FABRIC_STATE_DIR": str(tmp_path)}
    result = subprocess.run(
        [str(cli), "token", "--role", "admin"], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    return result.stdout.strip()


@pytest.mark.compose_smoke
@smoke
def test_container_serves_health_ready_and_metrics() -> None:
    with httpx.Client(base_url=str(SERVICE_URL), timeout=10) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "# TYPE" in metrics.text


@pytest.mark.compose_smoke
@smoke
def test_container_runs_a_task_end_to_end(services: dict[str, Any], tmp_path: Path) -> None:
    """HTTP -> JetStream -> the container's consumer -> builtin echo -> Postgres -> HTTP."""
    headers = {"Authorization": f"Bearer {admin_token(services, tmp_path)}"}
    job_id = f"compose-smoke-{uuid.uuid4().hex[:12]}"
    task = {
        "job_id": job_id,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": "echo", "input": {"hello": "compose"}},
    }
    with httpx.Client(base_url=str(SERVICE_URL), timeout=10, headers=headers) as client:
        submitted = client.post("/api/v1/tasks", json=task)
        assert submitted.status_code == 202, submitted.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            view = client.get(f"/api/v1/tasks/{job_id}").json()
            if view["status"] in {"completed", "failed", "cancelled", "rejected", "timed_out"}:
                break
            time.sleep(0.5)
        assert view["status"] == "completed", view
