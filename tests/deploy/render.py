"""Offline rendering of the agent-executor Composition (a small function-patch-and-transform).

`crossplane render` needs Docker and the function image, so the tests render the Composition
themselves: claim -> XR (XRD defaults applied, claim labels set) -> the pipeline's resources with
their patches applied. Only the patch and transform types the Composition uses are implemented;
any other type raises, so a Composition change the renderer does not understand fails loudly
instead of being skipped.

Semantics follow function-patch-and-transform v0.10.8: a missing `fromFieldPath` skips the patch
unless its policy is `Required`; a value missing from a `map` transform is an error; `Regexp`
without a match is an error.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

CLAIM_NAME_LABEL = "crossplane.io/claim-name"
CLAIM_NAMESPACE_LABEL = "crossplane.io/claim-namespace"


class RenderError(Exception):
    pass


# --- field paths: a.b[key.with/dots].c[0] ---------------------------------------------------


def parse_path(path: str) -> list[str | int]:
    segments: list[str | int] = []
    token = ""
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == ".":
            if token:
                segments.append(token)
                token = ""
        elif ch == "[":
            if token:
                segments.append(token)
                token = ""
            end = path.index("]", i)
            inner = path[i + 1 : end]
            segments.append(int(inner) if inner.isdigit() else inner)
            i = end
        else:
            token += ch
        i += 1
    if token:
        segments.append(token)
    return segments


_MISSING = object()


def get_path(obj: Any, path: str) -> Any:
    current = obj
    for seg in parse_path(path):
        if isinstance(seg, int):
            if not isinstance(current, list) or seg >= len(current):
                return _MISSING
            current = current[seg]
        else:
            if not isinstance(current, dict) or seg not in current:
                return _MISSING
            current = current[seg]
    return current


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    segments = parse_path(path)
    current: Any = obj
    for seg, nxt in zip(segments, [*segments[1:], None], strict=True):
        last = nxt is None
        empty: Any = [] if isinstance(nxt, int) else {}
        if isinstance(seg, int):
            if not isinstance(current, list):
                raise RenderError(f"{path}: index {seg} into a non-list")
            while len(current) <= seg:
                current.append(copy.deepcopy(empty))
            if last:
                current[seg] = copy.deepcopy(value)
            else:
                if current[seg] is None:
                    current[seg] = empty
                current = current[seg]
        else:
            if not isinstance(current, dict):
                raise RenderError(f"{path}: key {seg!r} into a non-object")
            if last:
                current[seg] = copy.deepcopy(value)
            else:
                current = current.setdefault(seg, empty)


# --- transforms and patches -----------------------------------------------------------------


def apply_transform(value: Any, transform: dict[str, Any]) -> Any:
    kind = transform["type"]
    if kind == "map":
        key = str(value)
        if key not in transform["map"]:
            raise RenderError(f"map transform: no entry for {key!r}")
        return copy.deepcopy(transform["map"][key])
    if kind == "string":
        spec = transform["string"]
        stype = spec.get("type", "Format")
        if stype == "Format":
            # Go's fmt.Sprintf with a single %s / %d verb.
            return re.sub(r"%[sdv]", lambda _m: str(value), spec["fmt"], count=1)
        if stype == "Regexp":
            match = re.search(spec["regexp"]["match"], str(value))
            if match is None:
                raise RenderError(f"regexp {spec['regexp']['match']!r} does not match {value!r}")
            return match.group(spec["regexp"].get("group", 0))
        raise RenderError(f"string transform type {stype} is not implemented by the test renderer")
    raise RenderError(f"transform type {kind} is not implemented by the test renderer")


def apply_patch(xr: dict[str, Any], composed: dict[str, Any], patch: dict[str, Any]) -> None:
    ptype = patch.get("type", "FromCompositeFieldPath")
    if ptype != "FromCompositeFieldPath":
        raise RenderError(f"patch type {ptype} is not implemented by the test renderer")
    value = get_path(xr, patch["fromFieldPath"])
    if value is _MISSING or value is None:
        if patch.get("policy", {}).get("fromFieldPath") == "Required":
            raise RenderError(f"required field {patch['fromFieldPath']} is missing from the XR")
        return
    for transform in patch.get("transforms", []):
        value = apply_transform(value, transform)
    set_path(composed, patch.get("toFieldPath") or patch["fromFieldPath"], value)


# --- XR from a claim ------------------------------------------------------------------------


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Fill `default`s of an openAPIV3Schema into value (what the API server does on admission)."""
    if schema.get("type") == "object" and isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
    return value


def xr_from_claim(claim: dict[str, Any], xrd: dict[str, Any]) -> dict[str, Any]:
    version = next(v for v in xrd["spec"]["versions"] if v.get("referenceable"))
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    meta = claim["metadata"]
    return {
        "apiVersion": f"{xrd['spec']['group']}/{version['name']}",
        "kind": xrd["spec"]["names"]["kind"],
        "metadata": {
            # Crossplane names the XR after the claim plus a random suffix.
            "name": f"{meta['name']}-x7k2p",
            "labels": {CLAIM_NAME_LABEL: meta["name"], CLAIM_NAMESPACE_LABEL: meta["namespace"]},
        },
        "spec": apply_defaults(copy.deepcopy(claim.get("spec", {})), spec_schema),
    }


# --- the pipeline ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Composed:
    name: str  # the resource's name in the Composition
    resource: dict[str, Any]  # what Crossplane creates (here: a provider-kubernetes Object)

    @property
    def manifest(self) -> dict[str, Any]:
        """The Kubernetes object provider-kubernetes applies."""
        return self.resource["spec"]["forProvider"]["manifest"]  # type: ignore[no-any-return]


def render(composition: dict[str, Any], xr: dict[str, Any]) -> list[Composed]:
    out: list[Composed] = []
    for step in composition["spec"]["pipeline"]:
        if step["functionRef"]["name"] != "function-patch-and-transform":
            raise RenderError(f"step {step['step']}: only function-patch-and-transform is rendered")
        pt_input = step["input"]
        patch_sets = {ps["name"]: ps["patches"] for ps in pt_input.get("patchSets", [])}
        for resource in pt_input["resources"]:
            composed = copy.deepcopy(resource["base"])
            for patch in resource.get("patches", []):
                if patch.get("type") == "PatchSet":
                    for inner in patch_sets[patch["patchSetName"]]:
                        apply_patch(xr, composed, inner)
                else:
                    apply_patch(xr, composed, patch)
            out.append(Composed(resource["name"], composed))
    return out


def by_kind(rendered: list[Composed]) -> dict[str, dict[str, Any]]:
    """Wrapped manifests by kind (the Composition composes one object of each kind)."""
    manifests: dict[str, dict[str, Any]] = {}
    for composed in rendered:
        manifest = composed.manifest
        if manifest["kind"] in manifests:
            raise RenderError(f"two composed objects of kind {manifest['kind']}")
        manifests[manifest["kind"]] = manifest
    return manifests
