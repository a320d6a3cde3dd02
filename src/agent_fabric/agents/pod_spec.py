"""Isolation level `container`, on Kubernetes: the manifests an agent's processes would run as.

A Deployment (one pod per process; `min_idle` replicas) whose pod runs the agent's command in the
given image with the isolation settings as Kubernetes enforces them: memory and CPU limits, a
pids limit is the node's (kubelet podPidsLimit), a read-only root filesystem with writable
emptyDir volumes for the working directory and /tmp, no service account token, non-root, no
privilege escalation, every capability dropped, the runtime's seccomp profile. A NetworkPolicy
lets the pods reach only the fabric's egress proxy (selected by label), so `network_egress` is
enforced there as it is locally. Pure: builds dictionaries, validated by tests against the JSON
schemas of deployment-apps-v1 and networkpolicy-networking-v1.

The fabric does not apply these (it holds no cluster credentials) and cannot yet drive a pod's
agent: the process protocol runs over the pipes of a local child.
"""

from __future__ import annotations

import re
from typing import Any

from agent_fabric.agents.process_spec import ProcessAgent

_LABEL = re.compile(r"[^a-z0-9-]")
WORKDIR = "/agent/work"


def resource_name(agent_id: str) -> str:
    """A DNS-1123 name for the agent's objects (63 characters at most)."""
    name = _LABEL.sub("-", agent_id.lower()).strip("-")
    return f"agent-{name}"[:63].rstrip("-")


def agent_manifests(agent: ProcessAgent, *, image: str, namespace: str, proxy_port: int = 3128) -> list[dict[str, Any]]:
    name = resource_name(agent.id)
    labels = {"app.kubernetes.io/name": "agent-fabric-agent", "app.kubernetes.io/instance": name}
    cpu_millis = max(1, int(agent.isolation.cpu_cores * 1000))
    env = [
        {"name": "AGENT_FABRIC_AGENT_ID", "value": agent.id},
        {"name": "AGENT_FABRIC_PROTOCOL", "value": "1"},
        {"name": "AGENT_FABRIC_HEARTBEAT_SECONDS", "value": f"{agent.runtime.heartbeat_interval:g}"},
        {"name": "HOME", "value": WORKDIR},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "HTTPS_PROXY", "value": f"http://agent-fabric-egress.{namespace}.svc:{proxy_port}"},
        {"name": "HTTP_PROXY", "value": f"http://agent-fabric-egress.{namespace}.svc:{proxy_port}"},
        *({"name": key, "value": value} for key, value in sorted(agent.env.items())),
    ]
    container = {
        "name": "agent",
        "image": image,
        "command": list(agent.command),
        "workingDir": WORKDIR,
        "env": env,
        "resources": {
            "requests": {"memory": f"{agent.isolation.memory_mb}Mi", "cpu": f"{cpu_millis}m"},
            "limits": {"memory": f"{agent.isolation.memory_mb}Mi", "cpu": f"{cpu_millis}m"},
        },
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "work", "mountPath": WORKDIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": max(1, agent.runtime.min_idle),
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": int(agent.runtime.drain_timeout + agent.runtime.stop_timeout),
                    "containers": [container],
                    "volumes": [
                        {"name": "work", "emptyDir": {"sizeLimit": "1Gi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            },
        },
    }
    egress_to_proxy = {
        "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "agent-fabric-egress"}}}],
        "ports": [{"protocol": "TCP", "port": proxy_port}],
    }
    dns = {
        "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{name}-egress"[:63], "namespace": namespace, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": labels},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],  # nothing calls an agent
            "egress": [egress_to_proxy, dns],  # out only through the proxy, which applies network_egress
        },
    }
    return [deployment, policy]
