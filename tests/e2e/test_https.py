"""`agent-fabric serve` speaks HTTPS itself (issue 15, item 3): a certificate generated here, then
mutual TLS with a client CA. Real process, real TLS handshakes; SQLite and the bundled defaults
except NATS."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.certs import TestCA, client_context
from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_serve_answers_over_https_with_its_certificate(tmp_path: Path, nats_url: str) -> None:
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("server", server=True)
    env = {
        "AGENT_FABRIC_NATS_URL": nats_url,
        "AGENT_FABRIC_TLS_CERT_FILE": str(server.cert),
        "AGENT_FABRIC_TLS_KEY_FILE": str(server.key),
    }
    fabric = ServeProcess(tmp_path / "fabric", env, tls=client_context(ca.ca)).start()
    try:
        assert fabric.url.startswith("https://")
        assert httpx.get(f"{fabric.url}/health", verify=client_context(ca.ca), timeout=5).status_code == 200
        with pytest.raises(httpx.ConnectError):  # an unknown issuer is not trusted by default
            httpx.get(f"{fabric.url}/health", timeout=5)
        with pytest.raises(httpx.RemoteProtocolError):  # plain HTTP on the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{fabric.port}/health", timeout=5)
    finally:
        fabric.stop()


def test_a_client_ca_makes_it_mutual_tls(tmp_path: Path, nats_url: str) -> None:
    ca = TestCA(tmp_path / "pki")
    server, client = ca.issue("server", server=True), ca.issue("client", server=False)
    stranger = TestCA(tmp_path / "other", name="someone else").issue("intruder", server=False)
    env = {
        "AGENT_FABRIC_NATS_URL": nats_url,
        "AGENT_FABRIC_TLS_CERT_FILE": str(server.cert),
        "AGENT_FABRIC_TLS_KEY_FILE": str(server.key),
        "AGENT_FABRIC_TLS_CLIENT_CA_FILE": str(ca.ca),
    }
    mine = client_context(ca.ca, client)
    fabric = ServeProcess(tmp_path / "fabric", env, tls=mine).start()
    try:
        assert httpx.get(f"{fabric.url}/health", verify=mine, timeout=5).status_code == 200
        for cert in (None, stranger):
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)):
                httpx.get(f"{fabric.url}/health", verify=client_context(ca.ca, cert), timeout=5)
    finally:
        fabric.stop()


def test_a_missing_certificate_file_is_refused_at_start(tmp_path: Path, nats_url: str) -> None:
    env = {
        "AGENT_FABRIC_NATS_URL": nats_url,
        "AGENT_FABRIC_STATE_DIR": str(tmp_path),
        "AGENT_FABRIC_TLS_CERT_FILE": str(tmp_path / "nope.crt"),
        "AGENT_FABRIC_TLS_KEY_FILE": str(tmp_path / "nope.key"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "agent_fabric", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "AGENT_FABRIC_TLS_CERT_FILE" in done.stderr
