"""A real `agent-fabric serve` process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.nats_server import free_port

JWT_SECRET = "e2e-secret-0123456789-abcdefghijklmnop"


class ServeProcess:
    def __init__(
        self,
        state_dir: Path,
        env: dict[str, str],
        name: str = "fabric",
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`: the process serves HTTPS; readiness is checked through this client context."""
        self.tls = tls
        self.port = free_port()
        self.state_dir = state_dir
        self.log_path = state_dir / f"{name}-{self.port}.log"
        self.env = {
            **os.environ,
            "AGENT_FABRIC_STATE_DIR": str(state_dir),
            "AGENT_FABRIC_HTTP_PORT": str(self.port),
            "AGENT_FABRIC_HTTP_HOST": "127.0.0.1",
            "AGENT_FABRIC_JWT_SECRET": JWT_SECRET,
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServeProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent_fabric", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1, verify=self.tls or True).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
