"""Cross-file checks the schemas cannot make: names agree, the platform matches the service.

Names of streams, consumers and settings come from the service itself (agent_fabric.names,
agent_fabric.settings), so a rename in the code fails here until deploy/ follows.
"""

from __future__ import annotations

import itertools
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent_fabric import names
from agent_fabric.settings import Settings
from tests.deploy import render as rd
from tests.deploy.conftest import Only
from tests.deploy.manifests import DEPLOY_DIR, REPO_ROOT, Manifest, settings_env_names, walk, yaml_files

SERVICE = "agent-executor"
NAMESPACE = "intelligence-deepagents"
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/part-of",
)
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
PROJECT_VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]

# Trigger metadata keys KEDA's nats-jetstream scaler reads (v2.20, pkg/scalers/nats_jetstream_scaler.go).
KEDA_NATS_KEYS = {
    "natsServerMonitoringEndpoint",
    "account",
    "accountID",
    "stream",
    "consumer",
    "lagThreshold",
    "activationLagThreshold",
    "useHttps",
}


# --- helpers ----------------------------------------------------------------------------------


def image_tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


def container(deployment: dict[str, Any], name: str | None = None, init: bool = False) -> dict[str, Any]:
    pod = deployment["spec"]["template"]["spec"]
    items = pod["initContainers" if init else "containers"]
    return items[0] if name is None else next(c for c in items if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def secret_refs(c: dict[str, Any]) -> list[str]:
    return [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]


def wave(m: Manifest) -> int:
    return int(m.annotations.get("argocd.argoproj.io/sync-wave", "0"))


def app_sources(app: dict[str, Any]) -> list[dict[str, Any]]:
    spec = app["spec"]
    return list(spec.get("sources") or [spec["source"]])


def chart_source(app: dict[str, Any]) -> dict[str, Any]:
    """The Helm chart source of an Application that installs an upstream chart."""
    [chart] = [s for s in app_sources(app) if "chart" in s]
    return chart


def files_of_source(source: dict[str, Any]) -> set[Path]:
    """Files Argo CD reads for a plain-directory source of this repository."""
    directory = source.get("directory", {})
    assert not directory.get("include") and not directory.get("exclude"), "globs are not modelled here"
    root = REPO_ROOT / source["path"]
    candidates = root.rglob("*") if directory.get("recurse") else root.glob("*")
    return {p for p in candidates if p.is_file() and p.suffix in {".yaml", ".yml", ".json"}}


@pytest.fixture(scope="session")
def applications(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {m.name: m for m in manifests if m.kind == "Application"}


@pytest.fixture(scope="session")
def repo_url(applications: dict[str, Manifest]) -> str:
    return str(applications["bootstrap"].doc["spec"]["source"]["repoURL"])


@pytest.fixture(scope="session")
def app_files(applications: dict[str, Manifest], repo_url: str) -> dict[str, set[Path]]:
    return {
        name: set().union(*(files_of_source(s) for s in app_sources(app.doc) if s["repoURL"] == repo_url))
        for name, app in applications.items()
    }


@pytest.fixture(scope="session")
def nats_app(applications: dict[str, Manifest]) -> dict[str, Any]:
    return applications["nats"].doc


@pytest.fixture(scope="session")
def nats_addresses(nats_app: dict[str, Any]) -> dict[str, str]:
    source = chart_source(nats_app)
    release = source["helm"].get("releaseName", nats_app["metadata"]["name"])
    namespace = nats_app["spec"]["destination"]["namespace"]
    config = source["helm"]["valuesObject"]["config"]
    monitor_port = config.get("monitor", {}).get("port", 8222)
    return {
        "namespace": namespace,
        "client_url": f"nats://{release}.{namespace}.svc.cluster.local:4222",
        "monitoring": f"{release}-headless.{namespace}.svc.cluster.local:{monitor_port}",
    }


# --- namespace and naming ---------------------------------------------------------------------


def test_namespace_follows_the_naming_convention(only: Only, applications: dict[str, Manifest]) -> None:
    ns = only("Namespace")
    layer, category = ns.labels["layer"], ns.labels["category"]
    assert ns.name == f"{layer}-{category}" == NAMESPACE
    assert re.fullmatch(r"[a-z0-9]+-[a-z0-9]+", ns.name) and len(ns.name) <= 63
    assert (REPO_ROOT / "docs/standards/namespace-naming-convention.md").is_file()
    assert ns.rel == f"deploy/platform/03-intelligence/namespace-{NAMESPACE}.yaml"
    # Namespaces Argo CD creates for upstream charts keep their names but carry the labels.
    for app in applications.values():
        if "CreateNamespace=true" in app.doc["spec"]["syncPolicy"].get("syncOptions", []):
            labels = app.doc["spec"]["syncPolicy"]["managedNamespaceMetadata"]["labels"]
            assert {"layer", "category"} <= set(labels), app.id


def test_every_namespaced_object_of_the_service_is_in_its_namespace(
    manifests: list[Manifest], composed: dict[str, dict[str, Any]]
) -> None:
    # The NATS server's own Secrets live with it (test_nats_requires_tls_and_a_login).
    namespaced = [
        m.doc
        for m in manifests
        if m.kind in {"ExternalSecret", "Job", "AgentExecutor"} and m.rel.startswith("deploy/platform")
    ]
    for doc in [*namespaced, *composed.values()]:
        assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]


def all_labelled_objects(manifests: list[Manifest], rendered: list[rd.Composed]) -> list[tuple[str, dict[str, Any]]]:
    """(where, metadata) of every object deploy/ creates, pod templates and composed ones included."""
    found = []
    objects = [(m.id, m.doc) for m in manifests]
    objects += [(f"composed {c.name} Object", c.resource) for c in rendered]
    objects += [(f"composed {c.name}", c.manifest) for c in rendered]
    for where, doc in objects:
        found.append((where, doc["metadata"]))
        template = doc.get("spec", {}).get("template") if isinstance(doc.get("spec"), dict) else None
        if isinstance(template, dict) and "metadata" in template:
            found.append((f"{where} pod template", template["metadata"]))
    return found


def test_standard_labels_everywhere(manifests: list[Manifest], rendered: list[rd.Composed]) -> None:
    problems = []
    for where, metadata in all_labelled_objects(manifests, rendered):
        labels = metadata.get("labels") or {}
        for key in STANDARD_LABELS:
            value = labels.get(key)
            if not isinstance(value, str) or not LABEL_VALUE.match(value) or len(value) > 63:
                problems.append(f"{where}: label {key}={value!r}")
    assert not problems, "\n".join(problems)


def expected_version(m: Manifest) -> str:
    doc = m.doc
    if m.kind == "Application" and any("chart" in s for s in app_sources(doc)):
        return str(chart_source(doc)["targetRevision"])
    if m.kind in {"Function", "Provider"}:
        return image_tag(doc["spec"]["package"])
    if m.kind == "Job":
        return image_tag(doc["spec"]["template"]["spec"]["containers"][0]["image"])
    if m.kind == "AgentExecutor":
        return image_tag(doc["spec"]["image"])
    return PROJECT_VERSION


def test_version_labels_say_what_is_deployed(
    manifests: list[Manifest], only: Only, composed: dict[str, dict[str, Any]], claim: dict[str, Any]
) -> None:
    provider_tag = image_tag(only("Provider").doc["spec"]["package"])
    for m in manifests:
        want = provider_tag if m.kind in {"DeploymentRuntimeConfig", "ProviderConfig"} else expected_version(m)
        assert m.labels["app.kubernetes.io/version"] == want, m.id
    # The composed workload carries the tag of the image it runs, patched from the claim.
    for manifest in composed.values():
        assert manifest["metadata"]["labels"]["app.kubernetes.io/version"] == image_tag(claim["spec"]["image"])


def test_service_objects_are_named_service_dash_resource(
    manifests: list[Manifest], composed: dict[str, dict[str, Any]]
) -> None:
    # An XRD's name is fixed by the API (<plural>.<group>); every other object follows the rule.
    objects = [(m.id, m.doc["metadata"]) for m in manifests if m.kind != "CompositeResourceDefinition"]
    objects += [(kind, doc["metadata"]) for kind, doc in composed.items()]
    for where, metadata in objects:
        if (metadata.get("labels") or {}).get("app.kubernetes.io/name") == SERVICE:
            name = metadata["name"]
            assert name == SERVICE or name.startswith(f"{SERVICE}-"), f"{where}: {name}"
    assert composed["ScaledObject"]["metadata"]["name"] == f"{SERVICE}-scaler"
    assert composed["NetworkPolicy"]["metadata"]["name"] == f"{SERVICE}-netpol"


def test_pod_selectors_match_pod_labels(composed: dict[str, dict[str, Any]]) -> None:
    deployment = composed["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        composed["Service"]["spec"]["selector"],
        composed["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
        # The selector must not follow the release: Deployment selectors are immutable.
        assert "app.kubernetes.io/version" not in selector


# --- KEDA -------------------------------------------------------------------------------------


def test_scaled_object_targets_the_composed_deployment(composed: dict[str, dict[str, Any]]) -> None:
    target = composed["ScaledObject"]["spec"]["scaleTargetRef"]
    deployment = composed["Deployment"]
    assert target["name"] == deployment["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    assert composed["ScaledObject"]["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    # KEDA's HPA owns the replica count; a fixed one would fight it on every sync.
    assert "replicas" not in deployment["spec"]


def test_scaled_object_reads_the_consumers_the_service_creates(
    composed: dict[str, dict[str, Any]], nats_addresses: dict[str, str]
) -> None:
    spec = composed["ScaledObject"]["spec"]
    assert spec["minReplicaCount"] == 1
    assert spec["maxReplicaCount"] == 10
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    triggers = spec["triggers"]
    assert [t["type"] for t in triggers] == ["nats-jetstream"] * len(names.PRIORITIES)
    assert sorted(t["metadata"]["consumer"] for t in triggers) == sorted(
        names.consumer_name(p) for p in names.PRIORITIES
    )
    for trigger in triggers:
        meta = trigger["metadata"]
        assert set(meta) <= KEDA_NATS_KEYS, f"unknown trigger keys {set(meta) - KEDA_NATS_KEYS}"
        assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
        assert meta["stream"] == names.TASK_STREAM
        assert meta["lagThreshold"] == "5"
        assert meta["activationLagThreshold"] == "1"
        assert meta["account"] == "$G"  # NATS without configured accounts
        assert meta["natsServerMonitoringEndpoint"] == nats_addresses["monitoring"]


def test_nats_chart_has_jetstream_and_monitoring(nats_app: dict[str, Any]) -> None:
    values = chart_source(nats_app)["helm"]["valuesObject"]
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["jetstream"]["fileStore"]["enabled"] is True
    assert values["config"]["monitor"]["enabled"] is True
    assert nats_app["spec"]["destination"]["namespace"] == "nats"
    assert chart_source(nats_app)["chart"] == "nats"


def test_nats_requires_tls_and_a_login(
    nats_app: dict[str, Any], manifests: list[Manifest], app_files: dict[str, set[Path]]
) -> None:
    """Issue 15: the broker is not open. TLS on the client port with a certificate from an
    ExternalSecret, and a user whose password the server reads from another one."""
    values = chart_source(nats_app)["helm"]["valuesObject"]
    tls = values["config"]["nats"]["tls"]
    assert tls["enabled"] is True
    [user] = values["config"]["merge"]["authorization"]["users"]
    variable = re.fullmatch(r"<< \$(\w+) >>", user["password"])
    assert variable, "the password is an environment reference, never a value in git"
    secret_ref = values["container"]["env"][variable.group(1)]["valueFrom"]["secretKeyRef"]
    server_secrets = {m.doc["spec"]["target"]["name"]: m for m in manifests if m.path in app_files["nats"]}
    assert set(server_secrets) == {tls["secretName"], secret_ref["name"]}
    for es in server_secrets.values():
        assert es.kind == "ExternalSecret" and es.doc["metadata"]["namespace"] == "nats"
        assert "SkipDryRunOnMissingResource=true" in es.annotations["argocd.argoproj.io/sync-options"]
    assert secret_ref["key"] in server_secrets[secret_ref["name"]].doc["spec"]["target"]["template"]["data"]
    tls_secret = server_secrets[tls["secretName"]].doc["spec"]["target"]["template"]
    assert tls_secret["type"] == "kubernetes.io/tls" and {"tls.crt", "tls.key", "ca.crt"} <= set(tls_secret["data"])
    # The executor logs in with the same parameter the server checks.
    [client] = [m for m in manifests if m.kind == "ExternalSecret" and m.name == "agent-executor-nats"]
    password_param = {d["remoteRef"]["key"] for d in server_secrets[secret_ref["name"]].doc["spec"]["data"]}
    assert password_param == {d["remoteRef"]["key"] for d in client.doc["spec"]["data"]}


def test_nats_url_is_the_same_everywhere(
    xrd: dict[str, Any],
    claim: dict[str, Any],
    only: Only,
    composed: dict[str, dict[str, Any]],
    nats_addresses: dict[str, str],
) -> None:
    xrd_props = xrd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    job = only("Job").doc["spec"]["template"]["spec"]["containers"][0]
    urls = {
        "XRD default": xrd_props["natsUrl"]["default"],
        "claim": claim["spec"]["natsUrl"],
        "stream Job": env_of(job)["AGENT_FABRIC_NATS_URL"],
        "Deployment": env_of(container(composed["Deployment"]))["AGENT_FABRIC_NATS_URL"],
    }
    assert set(urls.values()) == {nats_addresses["client_url"]}, urls
    assert xrd_props["natsMonitoringEndpoint"]["default"] == nats_addresses["monitoring"]


# --- secrets ----------------------------------------------------------------------------------

# Which setting each ExternalSecret must provide, and how its value must start.
SECRET_CONTRACT = {
    "postgresConnectionSecret": (
        "agent-executor-postgres-es.yaml",
        {"AGENT_FABRIC_DATABASE_URL": "postgresql+asyncpg://"},
    ),
    "dragonflyConnectionSecret": ("agent-executor-dragonfly-es.yaml", {"AGENT_FABRIC_REDIS_URL": "redis://"}),
    "natsCredentialsSecret": (
        "agent-executor-nats-es.yaml",
        {"AGENT_FABRIC_NATS_USER": "", "AGENT_FABRIC_NATS_PASSWORD": ""},
    ),
    "llmKeysSecret": (
        "agent-executor-llm-keys-es.yaml",
        {"AGENT_FABRIC_JWT_SECRET": "", "AGENT_FABRIC_AGENT_ZERO_URL": "", "AGENT_FABRIC_AGENT_ZERO_API_KEY": ""},
    ),
}


@pytest.mark.parametrize("claim_field", sorted(SECRET_CONTRACT))
def test_external_secret_provides_what_the_pod_reads(
    claim_field: str, manifests: list[Manifest], claim: dict[str, Any], composed: dict[str, dict[str, Any]]
) -> None:
    file_name, wanted = SECRET_CONTRACT[claim_field]
    [es] = [m for m in manifests if m.path.name == file_name]
    assert es.path.parent == DEPLOY_DIR / "platform/03-intelligence/external-secrets"
    spec = es.doc["spec"]
    assert spec["secretStoreRef"] == {"name": "aws-parameter-store", "kind": "ClusterSecretStore"}
    target = spec["target"]["name"]
    assert target == claim["spec"][claim_field], f"{file_name} makes {target}, the claim reads another Secret"
    assert es.name == target

    # The Secret's keys are exactly the env names, and the template uses only fetched values.
    template = spec["target"]["template"]["data"]
    for key, prefix in wanted.items():
        assert key in template, f"{file_name} does not provide {key}"
        assert template[key].startswith(prefix)
    fetched = {d["secretKey"] for d in spec["data"]}
    used = {v for t in template.values() for v in re.findall(r"\{\{\s*\.(\w+)", t)}
    assert used <= fetched, f"{file_name}: template uses {used - fetched}, not fetched"
    assert all(d["remoteRef"]["key"].startswith("/") for d in spec["data"]), "SSM parameter names are paths"

    # And the pod gets that Secret as env.
    assert target in secret_refs(container(composed["Deployment"]))


def test_cluster_secret_store_is_ssm_parameter_store(only: Only) -> None:
    store = only("ClusterSecretStore", "aws-parameter-store").doc
    assert store["spec"]["provider"]["aws"]["service"] == "ParameterStore"
    assert store["apiVersion"] == "external-secrets.io/v1"  # v1beta1 is no longer served


def test_secrets_reach_the_pod_only_as_env(composed: dict[str, dict[str, Any]]) -> None:
    pod = composed["Deployment"]["spec"]["template"]["spec"]
    # The one exception: the NATS CA certificate (public, no key) is read from a file.
    mounted = [v["secret"] for v in pod.get("volumes", []) if "secret" in v]
    assert all(m["items"] == [{"key": "ca.crt", "path": "ca.crt"}] for m in mounted), "no Secret volumes: env only"
    assert [m["secretName"] for m in mounted] == ["agent-executor-nats-ca"]
    assert pod["automountServiceAccountToken"] is False


def test_service_has_no_secret_store_client() -> None:
    """Secrets come from env (ESO-made Secrets), never from Vault or AWS at run time."""
    forbidden = re.compile(r"^\s*(?:import|from)\s+(boto3|botocore|aioboto3|aiobotocore|hvac)\b", re.MULTILINE)
    offenders = [
        str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "src").rglob("*.py") if forbidden.search(p.read_text())
    ]
    assert not offenders, offenders
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in dependencies if re.match(r"(boto3|botocore|aioboto3|hvac)\b", d)]


def test_environment_names_are_settings_the_service_reads(
    only: Only, composed: dict[str, dict[str, Any]], manifests: list[Manifest]
) -> None:
    known = settings_env_names()
    used: dict[str, set[str]] = {
        "Deployment": set(env_of(container(composed["Deployment"]))),
        "stream Job": set(env_of(only("Job").doc["spec"]["template"]["spec"]["containers"][0])),
    }
    as_env = set(secret_refs(container(composed["Deployment"]))) | set(
        secret_refs(only("Job").doc["spec"]["template"]["spec"]["containers"][0])
    )
    for m in manifests:
        if m.kind == "ExternalSecret" and m.doc["spec"]["target"]["name"] in as_env:
            used[m.name] = set(m.doc["spec"]["target"]["template"]["data"])
    unknown = {where: sorted(n - known) for where, n in used.items() if n - known}
    assert not unknown, f"environment variables agent_fabric.settings does not define: {unknown}"


# --- the pod: init container, probes, grace period ---------------------------------------------


def test_init_container_runs_the_migration_script(composed: dict[str, dict[str, Any]]) -> None:
    deployment = composed["Deployment"]
    init = container(deployment, init=True)
    main = container(deployment)
    command = " ".join(init.get("command", []) + init.get("args", []))
    assert "/app/scripts/ci/run-migrations.sh" in command
    assert init["image"] == main["image"]
    # Same database credentials as the main container.
    assert secret_refs(init) == [secret_refs(main)[0]]
    assert secret_refs(main)[0] == "agent-executor-postgres"
    # The image puts the repository's scripts/ at /app/scripts (see Dockerfile).
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "WORKDIR /app" in dockerfile and "COPY scripts ./scripts" in dockerfile


def test_migration_script_exists_in_the_repository() -> None:
    script = REPO_ROOT / "scripts/ci/run-migrations.sh"
    assert script.is_file(), "scripts/ci/run-migrations.sh (run by the init container) is missing"
    assert "agent-fabric migrate" in script.read_text()


def test_probes_port_and_metrics(composed: dict[str, dict[str, Any]]) -> None:
    deployment = composed["Deployment"]
    main = container(deployment)
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in main["ports"]
    assert main["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    assert main["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    [port] = composed["Service"]["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (8080, "http")


def test_grace_period_covers_the_drain(composed: dict[str, dict[str, Any]]) -> None:
    pod = composed["Deployment"]["spec"]["template"]["spec"]
    grace = float(env_of(container(composed["Deployment"]))["AGENT_FABRIC_SHUTDOWN_GRACE_SECONDS"])
    assert "shutdown_grace_seconds" in Settings.model_fields
    assert grace == Settings.model_fields["shutdown_grace_seconds"].default
    # SIGTERM -> drain for `grace` -> hand unfinished tasks back -> exit; SIGKILL only after 5 s more.
    assert pod["terminationGracePeriodSeconds"] == math.ceil(grace) + 5 == 30


def test_kubernetes_migrates_in_the_init_container_only(composed: dict[str, dict[str, Any]]) -> None:
    assert env_of(container(composed["Deployment"]))["AGENT_FABRIC_DATABASE_AUTO_MIGRATE"] == "false"


def test_pods_run_restricted(composed: dict[str, dict[str, Any]], only: Only) -> None:
    pods = [composed["Deployment"]["spec"]["template"]["spec"], only("Job").doc["spec"]["template"]["spec"]]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["readOnlyRootFilesystem"] is True
    assert only("Namespace").labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_size_maps_to_resources(composition: dict[str, Any], claim: dict[str, Any], xrd: dict[str, Any]) -> None:
    enum = xrd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["size"]["enum"]
    assert enum == ["small", "medium", "large"]
    maps = [
        t["map"]
        for step in composition["spec"]["pipeline"]
        for r in step["input"]["resources"]
        for p in r.get("patches", [])
        if p.get("fromFieldPath") == "spec.size"
        for t in p.get("transforms", [])
        if t["type"] == "map"
    ]
    assert maps and all(sorted(m) == sorted(enum) for m in maps), "every size map covers every size"
    cpu_requests = []
    for size in enum:
        variant = {**claim, "spec": {**claim["spec"], "size": size}}
        main = container(rd.by_kind(rd.render(composition, rd.xr_from_claim(variant, xrd)))["Deployment"])
        cpu_requests.append(main["resources"]["requests"]["cpu"])
        assert int(env_of(main)["AGENT_FABRIC_WORKER_CONCURRENCY"]) >= 1
    assert len(set(cpu_requests)) == 3, cpu_requests


def test_network_policy(composed: dict[str, dict[str, Any]], nats_addresses: dict[str, str]) -> None:
    spec = composed["NetworkPolicy"]["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = spec["ingress"]
    assert ingress["ports"] == [{"port": 8080, "protocol": "TCP"}]
    egress_ports = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
    for needed in [(53, "UDP"), (53, "TCP"), (4222, "TCP"), (5432, "TCP"), (6379, "TCP"), (443, "TCP")]:
        assert needed in egress_ports, f"egress {needed} missing"
    nats_rule = next(r for r in spec["egress"] if any(p["port"] == 4222 for p in r["ports"]))
    nats_namespace = {"kubernetes.io/metadata.name": nats_addresses["namespace"]}
    assert nats_rule["to"][0]["namespaceSelector"]["matchLabels"] == nats_namespace


# --- the stream Job ---------------------------------------------------------------------------


def test_stream_job_runs_setup_streams_with_the_claimed_image(only: Only, claim: dict[str, Any]) -> None:
    job = only("Job")
    pod = job.doc["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["command"] == ["agent-fabric", "setup-streams"]
    assert c["image"] == claim["spec"]["image"], "release both: the Job must create what this image needs"
    assert job.annotations["argocd.argoproj.io/hook"] == "Sync"
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    assert job.rel == "deploy/platform/03-intelligence/streams/agent-executor-setup-streams-job.yaml"


def test_image_has_the_commands_the_manifests_run() -> None:
    """`agent-fabric serve | migrate | setup-streams` exist in the installed CLI."""
    cli = Path(sys.executable).parent / "agent-fabric"
    for command in ("serve", "migrate", "setup-streams"):
        result = subprocess.run([str(cli), command, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"agent-fabric {command} --help failed:\n{result.stdout}{result.stderr}"


# --- Crossplane -------------------------------------------------------------------------------


def test_xrd_offers_the_agent_executor_claim(xrd: dict[str, Any], only: Only) -> None:
    spec = xrd["spec"]
    assert xrd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    assert xrd["metadata"]["name"] == "xagentexecutors.platform.bizmatters.io"
    assert spec["names"]["kind"] == "XAgentExecutor"
    assert spec["claimNames"]["kind"] == "AgentExecutor"
    # Claims exist only for apiextensions.crossplane.io/v1 XRDs with scope LegacyCluster.
    assert xrd["apiVersion"] == "apiextensions.crossplane.io/v1"
    assert spec["scope"] == "LegacyCluster"
    fields = spec["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for field in ("image", "size", "natsUrl", "postgresConnectionSecret", "dragonflyConnectionSecret", "llmKeysSecret"):
        assert field in fields
    assert fields["size"]["default"] == "small"
    assert only("AgentExecutor").rel == "deploy/platform/03-intelligence/agent-executor-claim.yaml"
    assert only("CompositeResourceDefinition").rel == "deploy/platform/04-apis/definitions/xagentexecutors.yaml"
    assert only("Composition").rel == "deploy/platform/04-apis/compositions/agent-executor-composition.yaml"


def test_composition_fits_the_xrd(xrd: dict[str, Any], composition: dict[str, Any], only: Only) -> None:
    version = xrd["spec"]["versions"][0]["name"]
    assert composition["spec"]["compositeTypeRef"] == {
        "apiVersion": f"{xrd['spec']['group']}/{version}",
        "kind": xrd["spec"]["names"]["kind"],
    }
    assert xrd["spec"]["defaultCompositionRef"]["name"] == composition["metadata"]["name"]
    assert composition["spec"]["mode"] == "Pipeline"
    function = only("Function").name
    assert {s["functionRef"]["name"] for s in composition["spec"]["pipeline"]} == {function}
    fields = xrd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    patches = [
        p
        for step in composition["spec"]["pipeline"]
        for group in [*step["input"].get("patchSets", []), *step["input"]["resources"]]
        for p in group.get("patches", [])
        if "fromFieldPath" in p
    ]
    for patch in patches:
        path = patch["fromFieldPath"]
        if path.startswith("spec."):
            assert path.split(".")[1] in fields, f"patch reads {path}, not in the XRD"
        else:
            claim_labels = {f"metadata.labels[{label}]" for label in (rd.CLAIM_NAME_LABEL, rd.CLAIM_NAMESPACE_LABEL)}
            assert path in claim_labels, path


def test_provider_can_create_every_composed_kind(
    only: Only, composed: dict[str, dict[str, Any]], rendered: list[rd.Composed]
) -> None:
    rules = only("ClusterRole", "agent-executor-composer").doc["rules"]
    binding = only("ClusterRoleBinding", "agent-executor-composer").doc
    runtime = only("DeploymentRuntimeConfig").doc
    provider = only("Provider").doc

    def plural(kind: str) -> str:
        lower = kind.lower()
        return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"

    verbs_needed = {"get", "create", "update", "patch", "delete"}
    for manifest in composed.values():
        group = manifest["apiVersion"].rpartition("/")[0]
        granted = set().union(
            *(set(r["verbs"]) for r in rules if group in r["apiGroups"] and plural(manifest["kind"]) in r["resources"])
        )
        assert verbs_needed <= granted, f"{manifest['kind']}: missing {verbs_needed - granted}"
    assert binding["roleRef"]["name"] == "agent-executor-composer"
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": runtime["spec"]["serviceAccountTemplate"]["metadata"]["name"],
            "namespace": "crossplane-system",
        }
    ]
    assert provider["spec"]["runtimeConfigRef"]["name"] == runtime["metadata"]["name"]
    config = only("ProviderConfig").name
    assert {c.resource["spec"]["providerConfigRef"]["name"] for c in rendered} == {config}
    assert all(c.resource["spec"]["deletionPolicy"] == "Delete" for c in rendered), "deleting the claim removes all"


# --- Argo CD ----------------------------------------------------------------------------------


def test_every_application_syncs_automatically_with_prune_and_self_heal(applications: dict[str, Manifest]) -> None:
    for app in applications.values():
        automated = app.doc["spec"]["syncPolicy"]["automated"]
        assert automated["prune"] is True and automated["selfHeal"] is True, app.id
        assert app.doc["metadata"]["namespace"] == "argocd"
        assert "resources-finalizer.argocd.argoproj.io" in app.doc["metadata"]["finalizers"]


def test_git_sources_point_at_this_repository(applications: dict[str, Manifest], repo_url: str) -> None:
    for app in applications.values():
        for source in app_sources(app.doc):
            if "chart" in source:
                continue
            assert source["repoURL"] == repo_url and source["targetRevision"] == "main", app.id
            assert (REPO_ROOT / source["path"]).is_dir(), f"{app.id}: {source['path']} does not exist"


def test_every_manifest_is_synced_by_exactly_one_application(app_files: dict[str, set[Path]]) -> None:
    root = DEPLOY_DIR / "bootstrap/root.yaml"  # applied once by hand
    for path in yaml_files():
        owners = [name for name, files in app_files.items() if path in files]
        expected = 0 if path == root else 1
        assert len(owners) == expected, f"{path.relative_to(REPO_ROOT)} is synced by {owners or 'no Application'}"


def test_app_of_apps_tree(applications: dict[str, Manifest], app_files: dict[str, set[Path]]) -> None:
    def children(parent: str) -> set[str]:
        return {applications_by_path[p] for p in app_files[parent] if p in applications_by_path}

    applications_by_path = {a.path: a.name for a in applications.values()}
    assert children("bootstrap") == {"nats", "external-secrets", "platform"}
    assert children("platform") == {"intelligence"}
    assert children("intelligence") == {SERVICE}
    # Foundation before the platform layers.
    assert max(wave(applications[n]) for n in ("nats", "external-secrets")) < wave(applications["platform"])
    assert applications["nats"].path.name == "01-nats.yaml"
    assert applications["external-secrets"].path.name == "01-eso.yaml"


def test_sync_waves_order_the_agent_executor_rollout(
    manifests: list[Manifest], app_files: dict[str, set[Path]]
) -> None:
    """namespace -> secrets -> stream Job -> XRD/Composition -> claim, in one Application."""
    mine = [m for m in manifests if m.path in app_files[SERVICE]]
    by_kind: dict[str, list[int]] = {}
    for m in mine:
        by_kind.setdefault(m.kind, []).append(wave(m))
    order = [
        ["Namespace"],
        ["ClusterSecretStore"],
        ["ExternalSecret"],
        ["Job"],
        [
            "CompositeResourceDefinition",
            "Function",
            "Provider",
            "DeploymentRuntimeConfig",
            "ClusterRole",
            "ClusterRoleBinding",
            "Composition",
            "ProviderConfig",
        ],
        ["AgentExecutor"],
        ["ServiceMonitor", "PrometheusRule", "ConfigMap"],  # observability/: watch what now runs
    ]
    assert {k for stage in order for k in stage} == set(by_kind), "every kind of the app has a place"
    for earlier, later in itertools.pairwise(order):
        latest = max(w for k in earlier for w in by_kind[k])
        soonest = min(w for k in later for w in by_kind[k])
        assert latest < soonest, f"{earlier} (wave {latest}) must come before {later} (wave {soonest})"
    # The Composition needs its XRD; objects of CRDs made during the sync skip the dry run.
    assert max(by_kind["CompositeResourceDefinition"]) < min(by_kind["Composition"])
    for m in mine:
        if m.kind in {"AgentExecutor", "ProviderConfig"}:
            assert "SkipDryRunOnMissingResource=true" in m.annotations["argocd.argoproj.io/sync-options"], m.id


def test_claim_release_fields(claim: dict[str, Any], only: Only) -> None:
    image = claim["spec"]["image"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9._/-]*/agent-fabric:[A-Za-z0-9_][A-Za-z0-9_.-]*", image), image
    assert claim["spec"]["size"] in {"small", "medium", "large"}
    # Each secret reference names an ExternalSecret target in the same namespace.
    targets = {
        m.doc["spec"]["target"]["name"]
        for m in [
            only("ExternalSecret", n)
            for n in (
                "agent-executor-postgres",
                "agent-executor-dragonfly",
                "agent-executor-llm-keys",
                "agent-executor-nats",
            )
        ]
    }
    assert {claim["spec"][f] for f in SECRET_CONTRACT} == targets


def test_all_manifests_are_parsed(manifests: list[Manifest]) -> None:
    """No YAML file under deploy/ is empty or a template that only renders elsewhere."""
    files_with_docs = {m.path for m in manifests}
    assert files_with_docs == set(yaml_files())
    assert not [m.id for m in manifests if any(isinstance(v, str) and "{{ .Values" in v for v in walk(m.doc))]
