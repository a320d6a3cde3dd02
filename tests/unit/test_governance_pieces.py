"""Audit redaction, every API route guarded by a permission, role grants, entity names. Pure."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from agent_fabric.admission.budget_reports import parse_entity, task_entities
from agent_fabric.app import create_app
from agent_fabric.audit.entries import REDACTED, scrub
from agent_fabric.security import roles
from agent_fabric.settings import Settings


def test_scrub_redacts_secret_keys_and_tokens_in_text() -> None:
    cleaned = scrub(
        {
            "password": "p",
            "nested": [{"client_secret": "s", "x-api-key": "k", "max_tokens": 5}],
            "url": "postgresql://user:pw@db/x",
            "text": "Authorization: Bearer abc.def.ghi",
        }
    )
    assert cleaned["password"] == REDACTED and cleaned["nested"][0]["client_secret"] == REDACTED
    assert cleaned["nested"][0]["x-api-key"] == REDACTED and cleaned["nested"][0]["max_tokens"] == 5
    assert "pw@" not in cleaned["url"] and "abc.def.ghi" not in cleaned["text"]


def test_scrub_cuts_oversized_payloads_and_keeps_types_json_safe() -> None:
    big = scrub({"blob": "x" * 100_000})
    assert big["truncated"] is True and big["bytes"] > 100_000 and len(big["preview"]) <= 2048
    assert scrub(None) is None and scrub({"n": 1.5, "ok": True}) == {"n": 1.5, "ok": True}


def test_every_api_route_names_its_permission() -> None:
    app = create_app(Settings())
    unguarded = []
    for route in app.routes:
        if not isinstance(route, APIRoute) or not (route.path.startswith("/api") or route.path == "/"):
            continue
        permissions = [getattr(d.call, "required_permission", None) for d in route.dependant.dependencies]
        if not any(permissions):
            unguarded.append(f"{sorted(route.methods)} {route.path}")
    assert unguarded == []


def test_role_grants() -> None:
    assert (
        roles.AUDIT_READ not in roles.BUILTIN_ROLES["viewer"] and roles.AUDIT_READ in roles.BUILTIN_ROLES["pod_admin"]
    )
    assert (
        roles.APPROVALS_DECIDE not in roles.BUILTIN_ROLES["agent"]
        and roles.POLICIES_CHECK in roles.BUILTIN_ROLES["agent"]
    )
    assert roles.POD_ADMIN in roles.BUILTIN_ROLES["pod_admin"] and roles.POD_ADMIN not in roles.BUILTIN_ROLES["agent"]
    # Beside the tenant binding, admin alone may define roles (they change every tenant's tokens)
    # and scan the agents directories (the package catalogue is the whole fabric's).
    assert roles.BUILTIN_ROLES["admin"] - roles.BUILTIN_ROLES["pod_admin"] == {
        roles.ROLES_MANAGE,
        roles.AGENTS_DISCOVER,
    }


def test_budget_entities() -> None:
    assert task_entities("t", "builtin", None) == ("tenant", "agent:builtin")
    assert task_entities("t", "builtin", "alice") == ("tenant", "agent:builtin", "user:alice")
    assert parse_entity("user:alice") == "user:alice" and parse_entity("tenant") == "tenant"
    for bad in ("robot:x", "agent:", "tenant:x", "x" * 300):
        with pytest.raises(ValueError):
            parse_entity(bad)
