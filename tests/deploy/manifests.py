"""Loading the deploy/ manifests and validating them against the shared JSON schemas.

The schemas live in `shared/k8s-schemas/`, the folder beside the repository clone (see its
README). They are strict: an unknown field fails, as it would on a real API server.

A few kinds have no schema there (Crossplane packages and provider-kubernetes). For those this
module carries *subset* schemas: strict schemas of only the fields these manifests may use, taken
from the CRDs of the versions the manifests install (provider-kubernetes v1.2.1, Crossplane
v2.3). They catch typos and wrong types, not every upstream rule.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic_settings import BaseSettings

from agent_fabric.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
SCHEMA_DIR = Path(__file__).resolve().parents[3] / "shared" / "k8s-schemas"

# Kubernetes version the core kinds are checked against with kubernetes-validate.
KUBERNETES_VERSION = "1.34"

CORE_GROUPS = {"", "apps", "batch", "networking.k8s.io", "rbac.authorization.k8s.io"}


@dataclass(frozen=True)
class Manifest:
    """One YAML document of a file under deploy/."""

    path: Path
    index: int
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def api_version(self) -> str:
        return str(self.doc["apiVersion"])

    @property
    def name(self) -> str:
        return str(self.doc.get("metadata", {}).get("name", ""))

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(REPO_ROOT))

    @property
    def id(self) -> str:
        return f"{self.rel}#{self.index}:{self.kind}/{self.name}"

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.doc.get("metadata", {}).get("labels") or {})

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.doc.get("metadata", {}).get("annotations") or {})


# Agent Zero profile configuration lives under deploy/ too, but is not Kubernetes (it is mounted
# into Agent Zero; tests/unit/test_agent_zero_profiles.py checks it).
NOT_KUBERNETES = DEPLOY_DIR / "agent-zero"


def yaml_files(root: Path = DEPLOY_DIR) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix in {".yaml", ".yml"} and p.is_file() and not p.is_relative_to(NOT_KUBERNETES)
    )


def load_manifests(root: Path = DEPLOY_DIR) -> list[Manifest]:
    found = []
    for path in yaml_files(root):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                found.append(Manifest(path, index, doc))
    return found


def group_of(api_version: str) -> str:
    group, _, _ = api_version.rpartition("/")
    return group


def schema_file_name(api_version: str, kind: str) -> str:
    """The kubeconform-style file name the shared README describes."""
    group, _, version = api_version.rpartition("/")
    kind = kind.lower()
    return f"{kind}-{group.split('.')[0]}-{version}.json" if group else f"{kind}-{version}.json"


@cache
def _shared_schema(file_name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / file_name).read_text())


def shared_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    path = SCHEMA_DIR / schema_file_name(api_version, kind)
    return _shared_schema(path.name) if path.exists() else None


# --- subset schemas for kinds without a shared schema ---------------------------------------

_STRING = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": list(required)}


_METADATA = _strict(
    {"name": _STRING, "namespace": _STRING, "labels": _LABELS, "annotations": _LABELS, "finalizers": {"type": "array"}}
)


def _top(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _strict(
        {"apiVersion": {"enum": [api_version]}, "kind": {"enum": [kind]}, "metadata": _METADATA, "spec": spec},
        ("apiVersion", "kind", "metadata", "spec"),
    )


SUBSET_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    # provider-kubernetes v1.2.1 package/crds/kubernetes.crossplane.io_objects.yaml, v1alpha2.
    ("kubernetes.crossplane.io/v1alpha2", "Object"): _top(
        "kubernetes.crossplane.io/v1alpha2",
        "Object",
        _strict(
            {
                "forProvider": _strict(
                    {
                        # The wrapped object is validated separately against its own schema.
                        "manifest": {"type": "object"},
                        "deletionPropagationPolicy": {"enum": ["Orphan", "Background", "Foreground"]},
                    },
                    ("manifest",),
                ),
                "providerConfigRef": _strict({"name": _STRING}, ("name",)),
                "deletionPolicy": {"enum": ["Orphan", "Delete"]},
                "managementPolicies": {"type": "array", "items": _STRING},
                "readiness": _strict(
                    {
                        "policy": {"enum": ["SuccessfulCreate", "DeriveFromObject", "AllTrue", "DeriveFromCelQuery"]},
                        "celQuery": _STRING,
                    }
                ),
                "watch": {"type": "boolean"},
            },
            ("forProvider",),
        ),
    ),
    # provider-kubernetes v1.2.1 package/crds/kubernetes.crossplane.io_providerconfigs.yaml.
    ("kubernetes.crossplane.io/v1alpha1", "ProviderConfig"): _top(
        "kubernetes.crossplane.io/v1alpha1",
        "ProviderConfig",
        _strict(
            {
                "credentials": _strict(
                    {"source": {"enum": ["None", "Secret", "InjectedIdentity", "Environment", "Filesystem"]}},
                    ("source",),
                )
            },
            ("credentials",),
        ),
    ),
    # (Provider: see provider_schema() below.)
    # Crossplane v2.3 pkg.crossplane.io/v1beta1 DeploymentRuntimeConfig (service account part).
    ("pkg.crossplane.io/v1beta1", "DeploymentRuntimeConfig"): _top(
        "pkg.crossplane.io/v1beta1",
        "DeploymentRuntimeConfig",
        _strict(
            {
                "serviceAccountTemplate": _strict(
                    {"metadata": _strict({"name": _STRING, "labels": _LABELS, "annotations": _LABELS})}
                )
            }
        ),
    ),
}


def provider_schema() -> dict[str, Any] | None:
    """Provider and Function share Crossplane's PackageSpec; reuse the Function schema's spec."""
    function = shared_schema("pkg.crossplane.io/v1", "Function")
    if function is None:
        return None
    schema = copy.deepcopy(function)
    schema["properties"]["apiVersion"] = {"enum": ["pkg.crossplane.io/v1"]}
    schema["properties"]["kind"] = {"enum": ["Provider"]}
    return schema


def strict_copy(schema: Any) -> Any:
    """An openAPIV3Schema made strict the way the shared schemas are: every object schema with
    properties and no additionalProperties refuses unknown fields."""
    if isinstance(schema, dict):
        out = {k: strict_copy(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict_copy(v) for v in schema]
    return schema


def schema_errors(doc: dict[str, Any], schema: dict[str, Any], ignore_required: bool = False) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
        if not (ignore_required and e.validator == "required")
    ]


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def settings_env_names() -> set[str]:
    """Every environment variable agent_fabric.settings reads (prefix + field, per section)."""
    found: set[str] = set()

    def visit(cls: type[BaseSettings]) -> None:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field_name, field in cls.model_fields.items():
            nested = field.annotation
            if isinstance(nested, type) and issubclass(nested, BaseSettings):
                visit(nested)
            else:
                found.add(f"{prefix}{field_name}".upper())

    visit(Settings)
    return found


# Prometheus Operator kinds (deploy/platform/03-intelligence/observability/).
from tests.deploy.monitoring_schemas import MONITORING_SCHEMAS  # noqa: E402

SUBSET_SCHEMAS.update(MONITORING_SCHEMAS)
