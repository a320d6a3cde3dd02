"""The Kubernetes manifests of a process agent at isolation `container` (agents/pod_spec.py):
valid against the shared JSON schemas and strict kubernetes-validate, and fenced in as promised."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate

from agent_fabric.agents.pod_spec import agent_manifests, resource_name
from agent_fabric.agents.process_spec import IsolationConfig, ProcessAgent, RuntimeConfig
from tests.deploy.manifests import KUBERNETES_VERSION, schema_errors, shared_schema

AGENT = ProcessAgent(
    id="steps-6f1c2a9e-0b7d-4c55-9a1e-3f2b8c7d6e5f",
    tenant_id="pod-7",
    name="StepsAgent",
    package_path=Path("/agents/steps"),
    command=["python", "agent.py"],
    runtime=RuntimeConfig(min_idle=2, drain_timeout=20, stop_timeout=5),
    isolation=IsolationConfig(level="container", memory_mb=256, cpu_cores=0.5),
    env={"LOG_FORMAT": "json"},
)


def test_the_manifests_validate_against_the_schemas(schema_dir: Path) -> None:
    for doc in agent_manifests(AGENT, image="registry.example/steps:1.0.0", namespace="agents"):
        schema = shared_schema(doc["apiVersion"], doc["kind"])
        assert schema is not None, doc["kind"]
        assert schema_errors(doc, schema) == [], doc["kind"]
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_pod_is_fenced_in() -> None:
    deployment, policy = agent_manifests(AGENT, image="registry.example/steps:1.0.0", namespace="agents")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["metadata"]["name"] == resource_name(AGENT.id) and len(resource_name(AGENT.id)) <= 63
    assert deployment["spec"]["replicas"] == 2
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"] == {"memory": "256Mi", "cpu": "500m"}
    assert pod["terminationGracePeriodSeconds"] == 25
    assert {"name": "LOG_FORMAT", "value": "json"} in container["env"]
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["ingress"] == []
    destinations = [rule["to"][0]["podSelector"]["matchLabels"] for rule in policy["spec"]["egress"]]
    assert destinations == [{"app.kubernetes.io/name": "agent-fabric-egress"}, {"k8s-app": "kube-dns"}]
