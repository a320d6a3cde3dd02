"""No SSRF through registered Agent Zero URLs, through the API on real services: refused ranges by
default (with the rule in the problem), the operator's opening, checks before every request, and
redirects that are never followed to another host."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent_fabric.agent_zero.client import AgentZeroClient
from agent_fabric.security.outbound_urls import OutboundGuard, UrlRefused
from agent_fabric.settings import OutboundSettings
from tests.conftest import RunningApp, make_settings, running_app
from tests.support.agent_zero_standin import running_standin
from tests.support.flows import auth_as, new_pod

KEY = "standin-key-0123456789"


async def register(app: RunningApp, pod: str, url: str) -> tuple[int, dict[str, object]]:
    response = await app.client.post(
        "/api/v2/agent/instances", json={"url": url, "api_key": KEY}, headers=auth_as(app, "alice", "pod_admin", pod)
    )
    return response.status_code, dict(response.json())


@pytest.mark.parametrize(
    "url, rule",
    [
        ("http://127.0.0.1:{port}", "loopback"),
        ("http://localhost:{port}", "loopback"),  # a name: resolved, every address checked
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://10.0.0.7:50001", "private"),
        ("http://[::ffff:127.0.0.1]:{port}", "loopback"),
    ],
)
async def test_default_settings_refuse_internal_urls_naming_the_rule(
    tmp_path: Path, nats_url: str, url: str, rule: str
) -> None:
    settings = make_settings(tmp_path, nats_url, outbound=OutboundSettings())  # the shipped default
    with http_server("127.0.0.1", None) as (listening, hits):
        port = listening.rsplit(":", 1)[1]
        async with running_app(settings) as app:
            status, problem = await register(app, new_pod(), url.format(port=port))
    assert hits.paths == []  # refused before anything was sent
    assert status == 422 and problem["code"] == "url_refused" and problem["rule"] == rule
    assert rule in str(problem["detail"])


async def test_an_operator_allowlist_admits_its_host(tmp_path: Path, nats_url: str) -> None:
    settings = make_settings(tmp_path, nats_url, outbound=OutboundSettings(allowlist="127.0.0.1/32"))
    with running_standin(KEY) as (url, _):
        async with running_app(settings) as app:
            status, body = await register(app, new_pod(), url)
            assert status == 201, body
            port = url.rsplit(":", 1)[1]
            status, problem = await register(app, new_pod(), f"http://127.0.0.2:{port}")  # not listed
            assert status == 422 and problem["rule"] == "allowlist"


async def test_every_connection_is_checked_again() -> None:
    """A name may resolve elsewhere after registration: the connection is refused before it is made."""
    with http_server("127.0.0.1", None) as (url, hits):
        closed = OutboundGuard(OutboundSettings())
        client = AgentZeroClient(url, KEY, retries=0, transport=closed.transport())
        try:
            with pytest.raises(UrlRefused, match="loopback"):
                await client.health()
        finally:
            await client.aclose()
        assert hits.paths == []


async def test_a_name_that_rebinds_between_check_and_connect_is_refused() -> None:
    """DNS rebinding: the name answers a public address to the check, then loopback. The client
    dials only what the guard itself resolved and passed, so it never reaches the loopback server
    the system resolver would have given it for `localhost`."""
    answers = [["203.0.113.10"], ["127.0.0.1"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0) if answers else ["127.0.0.1"]

    with http_server("127.0.0.1", None) as (url, hits):
        port = url.rsplit(":", 1)[1]
        guard = OutboundGuard(OutboundSettings(), resolve=rebinding)
        await guard.check(f"http://localhost:{port}")  # registered: the first answer passes
        client = AgentZeroClient(f"http://localhost:{port}", KEY, retries=0, transport=guard.transport())
        try:
            with pytest.raises(UrlRefused, match="loopback"):
                await client.health()
        finally:
            await client.aclose()
        assert hits.paths == []


async def test_a_passed_address_is_the_one_dialled() -> None:
    """The guard's answer is what the connection uses: a name the system cannot resolve reaches
    the server at the address the guard resolved and passed."""

    async def pinned(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    with http_server("127.0.0.1", None) as (url, hits):
        port = url.rsplit(":", 1)[1]
        guard = OutboundGuard(OutboundSettings(allowed_ranges="127.0.0.0/8"), resolve=pinned)
        client = AgentZeroClient(f"http://agent-zero.invalid:{port}", KEY, retries=0, transport=guard.transport())
        try:
            assert (await client.health())["error"] is None
        finally:
            await client.aclose()
        assert hits.paths == ["/api/health"]


class _Hits:
    def __init__(self) -> None:
        self.paths: list[str] = []


@contextmanager
def http_server(host: str, location: str | None) -> Iterator[tuple[str, _Hits]]:
    """Answers every request with a redirect to `location`, or (None) with 200 {}; records the paths."""
    hits = _Hits()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def _answer(self) -> None:
            hits.paths.append(self.path)
            if location is not None:
                self.send_response(302)
                self.send_header("Location", location + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


async def test_a_redirect_to_another_host_is_not_followed(fabric_app: RunningApp) -> None:
    with http_server("127.0.0.2", None) as (target, reached), http_server("127.0.0.1", target) as (url, asked):
        pod = new_pod()
        status, body = await register(fabric_app, pod, url)
        assert status == 201, body  # registered; its health check met the redirect and stopped there
        assert asked.paths and all(p.startswith("/api/") for p in asked.paths)
        client = AgentZeroClient(url, KEY, retries=0)
        try:
            with pytest.raises(Exception):  # noqa: B017  # a 302 is an error to the client, whatever its type
                await client.health()
        finally:
            await client.aclose()
        assert reached.paths == []  # the other host never heard from the fabric
        removed = await fabric_app.client.delete(
            f"/api/v2/agent/instances/{body['id']}", headers=auth_as(fabric_app, "alice", "pod_admin", pod)
        )
        assert removed.status_code == 200
