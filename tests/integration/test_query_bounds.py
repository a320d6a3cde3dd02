"""Issue 11, item 3: every integer (and number) query parameter of every route has an upper bound
in the schema, so a number past it is a 422 problem and never reaches the database driver.

The routes are found by walking the app's own OpenAPI document, so a route added later is checked
too. Runs on Postgres: asyncpg is what answered 500 to `cursor=9223372036854775808`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_fabric.outbound.sse import parse_event_id
from tests.conftest import RunningApp, make_settings, running_app

PAST_BIGINT = 2**63  # one past Postgres BIGINT


@pytest.fixture
async def pg_app(tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str) -> AsyncIterator[RunningApp]:
    async with running_app(make_settings(tmp_path, nats_url, database_url=postgres_url, redis_url=redis_url)) as app:
        yield app


def numeric_query_params(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, parameter) for every integer or number query parameter in the document."""
    found = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for param in operation.get("parameters", []):
                if param["in"] != "query":
                    continue
                schema = param.get("schema", {})
                variants = [schema, *schema.get("anyOf", [])]
                numeric = [v for v in variants if v.get("type") in ("integer", "number")]
                if numeric:
                    found.append((method, path, {**param, "numeric": numeric[0]}))
    return found


def caller(app: RunningApp, path: str) -> dict[str, str]:
    """The /api/v2/agent routes serve a pod (tenant-bound callers); the rest take an admin."""
    return app.auth("pod_admin", "pod-1") if path.startswith("/api/v2/") else app.auth()


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "probe", path)


async def test_the_walk_finds_the_audit_cursors(pg_app: RunningApp) -> None:
    found = {(path, p["name"]) for _, path, p in numeric_query_params(pg_app.app.openapi())}
    assert ("/api/v1/audit", "cursor") in found and ("/api/v2/agent/audit", "cursor") in found
    assert len(found) >= 20


async def test_every_numeric_query_parameter_is_bounded(pg_app: RunningApp) -> None:
    params = numeric_query_params(pg_app.app.openapi())
    unbounded = [f"{m.upper()} {path} ?{p['name']}" for m, path, p in params if "maximum" not in p["numeric"]]
    assert unbounded == [], f"query parameters without a maximum: {unbounded}"
    for method, path, param in params:
        numeric = param["numeric"]
        too_big = [PAST_BIGINT, numeric["maximum"] + 1]
        for value in too_big:
            response = await pg_app.client.request(
                method, concrete(path), params={param["name"]: value}, headers=caller(pg_app, path)
            )
            label = f"{method.upper()} {path}?{param['name']}={value}"
            assert response.status_code == 422, f"{label}: {response.status_code} {response.text[:200]}"
            assert response.json()["code"] == "invalid_request", label
        if method == "get":
            # The largest value the schema allows must also be answered, not crash the driver.
            edge = numeric["maximum"]
            response = await pg_app.client.get(
                concrete(path), params={param["name"]: edge}, headers=caller(pg_app, path)
            )
            assert response.status_code < 500, f"GET {path}?{param['name']}={edge}: {response.text[:200]}"


async def test_audit_cursor_past_bigint_is_422_on_both_versions(pg_app: RunningApp) -> None:
    for path in ("/api/v1/audit", "/api/v2/agent/audit"):
        response = await pg_app.client.get(
            path, params={"cursor": "9223372036854775808"}, headers=pg_app.auth("pod_admin", "pod-1")
        )
        assert response.status_code == 422, (path, response.text)


def test_sse_resume_id_past_the_column_range_replays_from_the_start() -> None:
    assert parse_event_id("1-5") == (1, 5)
    assert parse_event_id(f"1-{2**31}") is None and parse_event_id(f"{2**40}-1") is None
