"""Fixtures for the deployment tests: the manifests under deploy/, the Composition rendered with
the claim, and the shared JSON schemas (skipped with a message when they are not beside the clone).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import render as rd
from tests.deploy.manifests import SCHEMA_DIR, Manifest, load_manifests

Only = Callable[..., Manifest]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "compose_smoke: runs against the docker-compose.test.yml stack that scripts/compose-test.sh starts",
    )


@pytest.fixture(scope="session")
def schema_dir() -> Path:
    if not SCHEMA_DIR.is_dir():
        pytest.skip(f"the Kubernetes JSON schemas are not beside the clone ({SCHEMA_DIR} does not exist)")
    return SCHEMA_DIR


@pytest.fixture(scope="session")
def manifests() -> list[Manifest]:
    return load_manifests()


@pytest.fixture(scope="session")
def only(manifests: list[Manifest]) -> Only:
    """only(kind, name=None) -> the single manifest of that kind (and name) under deploy/."""

    def find(kind: str, name: str | None = None) -> Manifest:
        found = [m for m in manifests if m.kind == kind and (name is None or m.name == name)]
        assert len(found) == 1, f"expected one {kind} {name or ''} under deploy/, found {[m.id for m in found]}"
        return found[0]

    return find


@pytest.fixture(scope="session")
def xrd(only: Only) -> dict[str, Any]:
    return only("CompositeResourceDefinition").doc


@pytest.fixture(scope="session")
def composition(only: Only) -> dict[str, Any]:
    return only("Composition").doc


@pytest.fixture(scope="session")
def claim(only: Only) -> dict[str, Any]:
    return only("AgentExecutor").doc


@pytest.fixture(scope="session")
def xr(claim: dict[str, Any], xrd: dict[str, Any]) -> dict[str, Any]:
    return rd.xr_from_claim(claim, xrd)


@pytest.fixture(scope="session")
def rendered(composition: dict[str, Any], xr: dict[str, Any]) -> list[rd.Composed]:
    return rd.render(composition, xr)


@pytest.fixture(scope="session")
def composed(rendered: list[rd.Composed]) -> dict[str, dict[str, Any]]:
    """The claim's objects as provider-kubernetes applies them, by kind."""
    return rd.by_kind(rendered)
