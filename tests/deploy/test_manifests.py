"""Every manifest under deploy/ is valid for the API it targets, strictly (unknown fields fail).

- documents with a schema in shared/k8s-schemas are validated against it;
- the Composition's pipeline input against the function-patch-and-transform input schema, and
  every base (the provider-kubernetes Object and the object it wraps) against its own kind;
- the Composition rendered with the claim (tests/deploy/render.py) against the full schemas,
  required fields included: the patches must fill in everything the bases leave open;
- the claim against the XRD's own openAPIV3Schema, made strict;
- core kinds a second time with kubernetes-validate (Kubernetes 1.34, strict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy import render as rd
from tests.deploy.manifests import (
    CORE_GROUPS,
    KUBERNETES_VERSION,
    SUBSET_SCHEMAS,
    Manifest,
    group_of,
    load_manifests,
    provider_schema,
    schema_errors,
    shared_schema,
    strict_copy,
)

ALL = load_manifests()


def schema_for(api_version: str, kind: str) -> dict[str, Any] | None:
    if (api_version, kind) == ("pkg.crossplane.io/v1", "Provider"):
        return provider_schema()
    return shared_schema(api_version, kind) or SUBSET_SCHEMAS.get((api_version, kind))


def claim_schema(xrd: dict[str, Any]) -> dict[str, Any]:
    """The claim CRD Crossplane generates from the XRD, as a strict JSON schema."""
    version = next(v for v in xrd["spec"]["versions"] if v["referenceable"])
    group = xrd["spec"]["group"]
    schema = strict_copy(version["schema"]["openAPIV3Schema"])
    schema["properties"] = {
        **schema["properties"],
        "apiVersion": {"enum": [f"{group}/{version['name']}"]},
        "kind": {"enum": [xrd["spec"]["claimNames"]["kind"]]},
        "metadata": {"type": "object"},
    }
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return schema


def test_deploy_tree_is_not_empty() -> None:
    kinds = {m.kind for m in ALL}
    for kind in (
        "Namespace",
        "ExternalSecret",
        "ClusterSecretStore",
        "Job",
        "Application",
        "CompositeResourceDefinition",
        "Composition",
        "AgentExecutor",
        "ClusterRole",
    ):
        assert kind in kinds, f"no {kind} under deploy/"


@pytest.mark.parametrize("manifest", ALL, ids=[m.id for m in ALL])
def test_manifest_validates_strictly(manifest: Manifest, schema_dir: Path, xrd: dict[str, Any]) -> None:
    doc = manifest.doc
    if manifest.kind == "AgentExecutor":
        schema = claim_schema(xrd)
    else:
        schema = schema_for(manifest.api_version, manifest.kind)
    if schema is None and group_of(manifest.api_version) in CORE_GROUPS:
        # Core kinds without a shared schema file (e.g. ClusterRoleBinding): kubernetes-validate's.
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{manifest.id}: {exc.message}")
        return
    assert schema is not None, (
        f"{manifest.id}: no schema for {manifest.api_version} {manifest.kind} "
        f"(an unserved or misspelled apiVersion/kind?)"
    )
    errors = schema_errors(doc, schema)
    assert not errors, f"{manifest.id}:\n  " + "\n  ".join(errors)


CORE = [m for m in ALL if group_of(m.api_version) in CORE_GROUPS]


@pytest.mark.parametrize("manifest", CORE, ids=[m.id for m in CORE])
def test_core_manifest_passes_kubernetes_validate(manifest: Manifest) -> None:
    try:
        kubernetes_validate.validate(manifest.doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{manifest.id}: {exc.message}")


def test_composition_pipeline_input_validates(composition: dict[str, Any], schema_dir: Path) -> None:
    for step in composition["spec"]["pipeline"]:
        pt_input = step["input"]
        schema = shared_schema(pt_input["apiVersion"], pt_input["kind"])
        assert schema is not None, f"no schema for the input of step {step['step']}"
        errors = schema_errors(pt_input, schema)
        assert not errors, f"step {step['step']} input:\n  " + "\n  ".join(errors)


def composition_bases(composition: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (resource["name"], resource["base"])
        for step in composition["spec"]["pipeline"]
        for resource in step["input"]["resources"]
    ]


def test_composition_bases_validate(composition: dict[str, Any], schema_dir: Path) -> None:
    """Bases are partial until patched (required fields may be missing), but every field they do
    set must exist and have the right type, in the Object and in the object it wraps."""
    problems = []
    for name, base in composition_bases(composition):
        schema = schema_for(base["apiVersion"], base["kind"])
        assert schema is not None, f"base {name}: no schema for {base['apiVersion']} {base['kind']}"
        problems += [f"{name}: {e}" for e in schema_errors(base, schema, ignore_required=True)]
        wrapped = base.get("spec", {}).get("forProvider", {}).get("manifest")
        if base["kind"] == "Object":
            assert wrapped, f"base {name}: Object without spec.forProvider.manifest"
            inner = schema_for(wrapped["apiVersion"], wrapped["kind"])
            assert inner is not None, f"base {name}: no schema for wrapped {wrapped['apiVersion']} {wrapped['kind']}"
            problems += [f"{name} manifest: {e}" for e in schema_errors(wrapped, inner, ignore_required=True)]
    assert not problems, "\n".join(problems)


def test_rendered_claim_objects_validate_completely(rendered: list[rd.Composed], schema_dir: Path) -> None:
    assert {c.manifest["kind"] for c in rendered} == {
        "Deployment",
        "Service",
        "ScaledObject",
        "ServiceAccount",
        "NetworkPolicy",
    }
    problems = []
    for composed in rendered:
        wrapper = composed.resource
        problems += [
            f"{composed.name} Object: {e}"
            for e in schema_errors(wrapper, schema_for(wrapper["apiVersion"], wrapper["kind"]) or {})
        ]
        manifest = composed.manifest
        schema = schema_for(manifest["apiVersion"], manifest["kind"])
        assert schema is not None
        problems += [f"{composed.name}: {e}" for e in schema_errors(manifest, schema)]
        if group_of(manifest["apiVersion"]) in CORE_GROUPS:
            try:
                kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{composed.name} (kubernetes-validate): {exc.message}")
    assert not problems, "\n".join(problems)


def test_every_size_renders_valid_objects(
    composition: dict[str, Any], claim: dict[str, Any], xrd: dict[str, Any], schema_dir: Path
) -> None:
    spec_schema = xrd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for size in spec_schema["properties"]["size"]["enum"]:
        variant = {**claim, "spec": {**claim["spec"], "size": size}}
        deployment = rd.by_kind(rd.render(composition, rd.xr_from_claim(variant, xrd)))["Deployment"]
        errors = schema_errors(deployment, shared_schema("apps/v1", "Deployment") or {})
        assert not errors, f"size {size}: {errors}"


def test_xrd_schema_is_a_valid_schema_and_accepts_the_claim(xrd: dict[str, Any], claim: dict[str, Any]) -> None:
    for version in xrd["spec"]["versions"]:
        jsonschema.Draft202012Validator.check_schema(version["schema"]["openAPIV3Schema"])
    schema = claim_schema(xrd)
    assert not schema_errors(claim, schema)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"size": "huge"}, "size outside small/medium/large"),
        ({"image": "ghcr.io/bizmatters/agent-fabric"}, "image without a tag"),
        ({"llmKeySecret": "x"}, "misspelled field"),
    ],
)
def test_xrd_schema_rejects_bad_claims(
    xrd: dict[str, Any], claim: dict[str, Any], change: dict[str, str], why: str
) -> None:
    bad = {**claim, "spec": {**claim["spec"], **change}}
    assert schema_errors(bad, claim_schema(xrd)), f"the XRD schema accepts a claim with {why}"


def test_claim_without_image_is_rejected(xrd: dict[str, Any], claim: dict[str, Any]) -> None:
    spec = {k: v for k, v in claim["spec"].items() if k != "image"}
    assert schema_errors({**claim, "spec": spec}, claim_schema(xrd))


def test_composition_refuses_an_xr_without_claim(composition: dict[str, Any], xr: dict[str, Any]) -> None:
    """Without the claim-namespace label there is no namespace to compose into: fail, don't guess."""
    orphan = {**xr, "metadata": {"name": xr["metadata"]["name"], "labels": {}}}
    with pytest.raises(rd.RenderError, match="claim-namespace"):
        rd.render(composition, orphan)


def test_schema_validation_catches_typos(schema_dir: Path, only: Any) -> None:
    """The strictness the other tests rely on: a misspelled field fails."""
    job = only("Job").doc
    typo = {**job, "spec": {**job["spec"], "ttlSecondsAfterFinish": 60}}
    assert schema_errors(typo, shared_schema("batch/v1", "Job") or {})
    app = only("Application", "agent-executor").doc
    typo = {**app, "spec": {**app["spec"], "syncPolicy": {"automated": {"prune": True, "selfheal": True}}}}
    assert schema_errors(typo, shared_schema("argoproj.io/v1alpha1", "Application") or {})
