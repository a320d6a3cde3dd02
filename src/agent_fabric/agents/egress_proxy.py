"""The egress proxy of one agent: an HTTP proxy on a unix socket, the only door out of its sandbox.

Each connection is one request: `CONNECT host:port` (HTTPS and any TLS: a tunnel, the fabric
never sees the content) or a plain `GET http://host/...` (forwarded with `Connection: close`).
It passes only if the host (or host:port) is in the agent's `network_egress` list (an entry
`*.example.com` covers subdomains) **and** the policy engine allows the action
`url:<scheme>://<host>[:<port>]/<path>` for the agent (the tenant's `url:` rules). Every decision
is audited (`agent.egress`); a refusal answers 403 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
Decide = Callable[[str, str, int, str], Awaitable[tuple[bool, str]]]  # (scheme, host, port, url) -> ok, why


def host_allowed(allowlist: list[str], host: str, port: int) -> bool:
    host = host.lower().strip("[]")
    for entry in allowlist:
        name, _, wanted_port = entry.lower().partition(":")
        if wanted_port and wanted_port != str(port):
            continue
        if name == host or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


class EgressProxy:
    def __init__(self, path: Path, decide: Decide) -> None:
        self.path = path
        self._decide = decide
        self._server: asyncio.AbstractServer | None = None
        self._tunnels: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tunnels):
            task.cancel()
        await asyncio.gather(*self._tunnels, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tunnels.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tunnels.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD_BYTES:
            return await _refuse(writer, 431, "request head too large")
        request_line, _, rest = head.decode("latin-1").partition("\r\n")
        method, target, _version = [*request_line.split(" "), "", ""][:3]
        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            scheme, port, path = "https", int(port_text or 443), "/"
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                return await _refuse(writer, 400, "send an absolute http:// URL, or CONNECT for https")
            scheme, host, port = "http", parts.hostname, parts.port or 80
            path = parts.path or "/"
        default_port = {"http": 80, "https": 443}[scheme]
        url = f"{scheme}://{host}{'' if port == default_port else f':{port}'}{path}"
        allowed, why = await self._decide(scheme, host, port, url)
        if not allowed:
            return await _refuse(writer, 403, why)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=10)
        except (OSError, TimeoutError) as exc:
            return await _refuse(writer, 502, f"cannot reach {host}:{port}: {exc}")
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            origin = path + (f"?{urlsplit(target).query}" if urlsplit(target).query else "")
            headers = [h for h in rest.split("\r\n") if h and not h.lower().startswith(("proxy-", "connection:"))]
            up_writer.write(f"{method} {origin} HTTP/1.1\r\n".encode("latin-1"))
            up_writer.write(("\r\n".join([*headers, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
        await asyncio.gather(copy_stream(reader, up_writer), copy_stream(up_reader, writer))


async def copy_stream(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.write_eof()


async def _refuse(writer: asyncio.StreamWriter, status: int, why: str) -> None:
    body = f"agent-fabric egress proxy: {why}\n".encode()
    writer.write(
        f"HTTP/1.1 {status} Refused\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
