"""IsolationManager (seed 001 FR-ISO-1..6): the fence around an agent's processes.

Level `process`, what each process gets:
- its own session and process group (a signal to the group reaches everything it started);
- memory, CPU and process-count limits from a control group (cgroups.py: v2, else v1), or where
  the host lets the fabric create none, rlimits: RLIMIT_AS for memory (address space, a stricter
  proxy) and RLIMIT_NPROC for processes (not applied to root); CPU is then not limited;
- a working directory of the agent's own under `filesystem_root`, removed on destroy;
- an environment built from nothing: PATH, locale, HOME/TMPDIR in the working directory and the
  AGENT_FABRIC_AGENT_* values the protocol defines; none of the fabric's variables (secrets).

Level `none` runs the command as a plain child with the fabric's environment, in the package
directory: for trusted agents only. Level `container` needs a container runtime; this fabric runs
local processes only, so it is refused with a message saying so (level_unavailable), which
registration already tells (registration_notices.py).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil

from agent_fabric.agents.cgroups import CgroupManager, Group, Limits
from agent_fabric.agents.egress_gate import EgressGate
from agent_fabric.agents.egress_proxy import EgressProxy
from agent_fabric.agents.nats_relay import NatsRelay
from agent_fabric.agents.process_spec import IsolationConfig, ProcessAgent
from agent_fabric.errors import ConfigurationError, InvalidRequest

_PASSED_THROUGH = ("LANG", "LC_ALL", "TZ")
BRIDGE_PORT = 3128  # inside each agent's own network namespace: never a clash
NATS_PORT = 4222
GATEWAY_PORT = 4080  # the fabric's LLM gateway (its /v1), relayed into the namespace like NATS
SOCKET_DIR_PREFIX = "af-egress-"
SDK_PATH = str(Path(__file__).resolve().parents[2])  # the directory holding the agent_fabric package


@dataclass
class Launch:
    """How to start one process of an agent: argv (wrapped to enter its group), cwd, env."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    group: Group | None
    new_session: bool
    netns: bool = False  # in bubblewrap's network namespace: exit codes over 128 are signals


@dataclass
class Sandbox:
    agent_id: str
    config: IsolationConfig
    workdir: Path
    enforcement: str
    cgroups: CgroupManager | None
    groups: dict[str, Group] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    proxy: EgressProxy | None = None  # the only way out of its network namespace (None: no namespace)
    bwrap: str | None = None
    nats_relay: NatsRelay | None = None  # its route to the NATS server from inside the namespace
    gateway_relay: NatsRelay | None = None  # its route to the fabric's own HTTP port (the LLM gateway)

    def model_base_url(self, base_url: str) -> str:
        """The gateway's base URL as the agent's processes reach it: inside a network namespace,
        the in-sandbox relay (127.0.0.1:GATEWAY_PORT, straight to this fabric's HTTP port, where the
        gateway is /v1 whatever path LLM_PUBLIC_BASE_URL shows the world)."""
        if self.gateway_relay is None:
            return base_url
        return f"http://127.0.0.1:{GATEWAY_PORT}/v1"

    def launch(self, agent: ProcessAgent, name: str, heartbeat_interval: float) -> Launch:
        """Prepare process `name` of the agent (its control group, if any) and say how to start it."""
        protocol_env = {
            "AGENT_FABRIC_AGENT_ID": agent.id,
            "AGENT_FABRIC_HEARTBEAT_SECONDS": f"{heartbeat_interval:g}",
            "AGENT_FABRIC_PROTOCOL": "1",
            "AGENT_FABRIC_AGENT_CONFIG": orjson.dumps(agent.config).decode(),
            "AGENT_FABRIC_PACKAGE_DIR": str(agent.package_path),
        }
        command = _resolve(agent.command, agent.package_path)
        if self.config.level == "none":
            env = {**os.environ, **protocol_env, **self._nats_env(agent)}
            env["PYTHONPATH"] = _pythonpath(os.environ.get("PYTHONPATH"))
            return Launch(command, agent.package_path, env, None, new_session=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        env = {key: os.environ[key] for key in _PASSED_THROUGH if key in os.environ}
        env.update(
            PATH=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            HOME=str(self.workdir),
            TMPDIR=str(self.workdir / "tmp"),
            PYTHONPATH=SDK_PATH,
            PYTHONDONTWRITEBYTECODE="1",
        )
        env.update(agent.env)
        env.update(protocol_env)
        env.update(self._nats_env(agent))
        group = None
        prelude: list[str] = []
        if self.cgroups is not None:
            group = self.cgroups.create(self.agent_id, name, _limits(self.config))
            self.groups[name] = group
            prelude = [f"echo $$ > {shlex.quote(str(path))}" for path in group.procs_files()]
        else:
            prelude = [
                f"ulimit -v {self.config.memory_mb * 1024}",
                f"ulimit -u {self.config.max_pids} 2>/dev/null || true",
            ]
        if self.proxy is not None and self.bwrap is not None:
            proxy_url = f"http://127.0.0.1:{BRIDGE_PORT}"
            env.update(HTTP_PROXY=proxy_url, HTTPS_PROXY=proxy_url, http_proxy=proxy_url, https_proxy=proxy_url)
            # Only the fabric's own gateway bypasses the proxy (it is a relay inside the namespace).
            bypass = f"127.0.0.1:{GATEWAY_PORT}" if self.gateway_relay is not None else ""
            env.update(NO_PROXY=bypass, no_proxy=bypass)
            forwards = [f"{BRIDGE_PORT}={self.proxy.path}"]
            if self.nats_relay is not None:
                forwards.append(f"{NATS_PORT}={self.nats_relay.path}")
            if self.gateway_relay is not None:
                forwards.append(f"{GATEWAY_PORT}={self.gateway_relay.path}")
            command = [
                *(self.bwrap, "--unshare-net", "--die-with-parent", "--dev-bind", "/", "/"),
                *("--chdir", str(self.workdir), "--"),
                *(sys.executable, "-m", "agent_fabric.agents.egress_bridge", *forwards, "--"),
                *command,
            ]
        # A shell enters the limits, then becomes the agent (exec): nothing runs outside them.
        script = " && ".join([*prelude, 'exec "$@"'])
        argv = ["/bin/sh", "-c", script, "agent-launch", *command]
        return Launch(argv, self.workdir, env, group, new_session=True, netns=self.proxy is not None)

    def _nats_env(self, agent: ProcessAgent) -> dict[str, str]:
        """The agent's own NATS credentials; inside a network namespace its URL is the relay's."""
        if agent.nats is None:
            return {}
        url = f"nats://127.0.0.1:{NATS_PORT}" if self.nats_relay is not None else agent.nats["url"]
        return {
            "AGENT_NATS_URL": url,
            "AGENT_NATS_USER": agent.nats["user"],
            "AGENT_NATS_PASSWORD": agent.nats["password"],
            "AGENT_NATS_INBOX_PREFIX": agent.nats["inbox_prefix"],
            "AGENT_NATS_CONTROL_SUBJECT": agent.nats["control_subject"],
        }

    def started(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def finished(self, name: str) -> None:
        """A process of the agent ended: forget its pid and remove its control group."""
        self.pids.pop(name, None)
        group = self.groups.pop(name, None)
        if group is not None:
            group.remove()


def _resolve(command: list[str], package: Path) -> list[str]:
    """A relative script path in the command is the package's file; `python` is the fabric's."""
    if not command:
        raise ConfigurationError("the agent has no command (AGENT_COMMAND in its .env.discovery)")
    argv = list(command)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return [str(package / a) if not a.startswith("-") and (package / a).is_file() else a for a in argv]


def _pythonpath(current: str | None) -> str:
    return SDK_PATH if not current else f"{SDK_PATH}:{current}"


def _limits(config: IsolationConfig) -> Limits:
    return Limits(config.memory_mb * 1024 * 1024, config.cpu_cores, config.max_pids)


def level_unavailable(level: str) -> str | None:
    """Why this fabric cannot run an agent's processes at isolation `level`, None if it can. The one
    check: the start of its processes refuses with it, registration (registration_notices.py) warns.
    Level `container` needs a container runtime, and this fabric has none on any host: it runs
    agents as local processes (Kubernetes runs them from GET /api/v1/agents/{id}/kubernetes)."""
    if level == "container":
        return (
            "isolation level 'container' needs a container runtime (Kubernetes); this fabric runs agents "
            "as local processes: use level 'process'"
        )
    return None


class IsolationManager:
    def __init__(
        self,
        default_root: Path,
        cgroups: CgroupManager | None,
        egress: EgressGate | None = None,
        bwrap: str | None = None,
        gateway: tuple[str, int] | None = None,
    ) -> None:
        self._root = default_root
        self._gateway = gateway  # this fabric's HTTP (host, port) when it serves the LLM gateway
        self._cgroups = cgroups
        self._egress = egress
        self._bwrap = bwrap if egress is not None else None
        self._sockets = _socket_dir() if self._bwrap else None
        self._sandboxes: dict[str, Sandbox] = {}
        self._serial = 0

    @property
    def enforcement(self) -> str:
        """What `process` isolation enforces on this host (README "Isolation")."""
        limits = (
            f"{self._cgroups.description}: memory, cpu and pids limits"
            if self._cgroups is not None
            else "rlimits: address-space limit and RLIMIT_NPROC (not for root); no CPU limit"
        )
        if self._bwrap is None:
            return f"{limits}; network not isolated (bubblewrap missing): egress allowlist NOT enforced"
        return f"{limits}; network namespace (bubblewrap), egress only through the fabric's allowlist proxy"

    async def create_sandbox(
        self, agent_id: str, config: IsolationConfig, *, tenant_id: str = "default", nats_url: str | None = None
    ) -> Sandbox:
        problem = level_unavailable(config.level)
        if problem is not None:
            raise InvalidRequest(problem, code="isolation_unavailable")
        existing = self._sandboxes.get(agent_id)
        if existing is not None and existing.config == config:
            return existing
        root = Path(config.filesystem_root) if config.filesystem_root else self._root
        sandbox = Sandbox(
            agent_id,
            config,
            root / _safe(agent_id),
            self.enforcement if config.level == "process" else "none",
            self._cgroups if config.level == "process" else None,
        )
        if existing is not None:
            await self.destroy_sandbox(agent_id)
        if config.level == "process" and self._egress is not None and self._sockets is not None:
            self._serial += 1
            decide = self._egress.for_agent(agent_id, tenant_id, list(config.network_egress))
            sandbox.proxy = EgressProxy(self._sockets / f"{self._serial}.sock", decide)
            sandbox.bwrap = self._bwrap
            await sandbox.proxy.start()
            parts = urlsplit(nats_url) if nats_url else None
            if parts is not None and parts.hostname:
                sandbox.nats_relay = NatsRelay(
                    self._sockets / f"{self._serial}n.sock", parts.hostname, parts.port or 4222
                )
                await sandbox.nats_relay.start()
            if self._gateway is not None:
                host, port = self._gateway
                sandbox.gateway_relay = NatsRelay(self._sockets / f"{self._serial}g.sock", host, port)
                await sandbox.gateway_relay.start()
        self._sandboxes[agent_id] = sandbox
        return sandbox

    async def destroy_sandbox(self, agent_id: str) -> None:
        """Remove the agent's control groups and working directory (its processes have ended)."""
        sandbox = self._sandboxes.pop(agent_id, None)
        if sandbox is None:
            return
        for name in list(sandbox.groups):
            sandbox.finished(name)
        if sandbox.proxy is not None:
            await sandbox.proxy.aclose()
        if sandbox.nats_relay is not None:
            await sandbox.nats_relay.aclose()
        if sandbox.gateway_relay is not None:
            await sandbox.gateway_relay.aclose()
        if sandbox.cgroups is not None:
            sandbox.cgroups.remove_agent(agent_id)
        if sandbox.config.level == "process":
            shutil.rmtree(sandbox.workdir, ignore_errors=True)

    async def aclose(self) -> None:
        """Destroy every sandbox left and the directory of the egress sockets."""
        for agent_id in list(self._sandboxes):
            await self.destroy_sandbox(agent_id)
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)

    async def get_resource_usage(self, agent_id: str) -> dict[str, Any]:
        """RSS, CPU seconds and open files per process (its children included) and for the agent."""
        return self.resource_usage(agent_id)

    def resource_usage(self, agent_id: str) -> dict[str, Any]:
        """The same, synchronously (a few /proc reads per process), for the metrics collector."""
        sandbox = self._sandboxes.get(agent_id)
        processes: dict[str, dict[str, Any]] = {}
        for name, pid in dict(sandbox.pids if sandbox else {}).items():
            processes[name] = _usage_of(pid)
        total = {
            "rss_bytes": sum(p["rss_bytes"] for p in processes.values()),
            "cpu_seconds": round(sum(p["cpu_seconds"] for p in processes.values()), 3),
            "open_files": sum(p["open_files"] for p in processes.values()),
        }
        return {"agent_id": agent_id, "processes": processes, "total": total}


def _usage_of(pid: int) -> dict[str, Any]:
    usage = {"pid": pid, "rss_bytes": 0, "cpu_seconds": 0.0, "open_files": 0}
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    usage["rss_bytes"] += proc.memory_info().rss
                    usage["cpu_seconds"] += times.user + times.system
                    usage["open_files"] += proc.num_fds()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    except psutil.NoSuchProcess:
        pass
    usage["cpu_seconds"] = round(float(usage["cpu_seconds"]), 3)
    return usage


def _socket_dir() -> Path:
    """A short directory for the unix sockets (their paths may not exceed 108 bytes), named by this
    process; those left by fabrics that died (kill -9) are removed on the way."""
    for stale in Path(tempfile.gettempdir()).glob(f"{SOCKET_DIR_PREFIX}*"):
        owner = stale.name[len(SOCKET_DIR_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not psutil.pid_exists(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-"))


def _safe(agent_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in agent_id)
