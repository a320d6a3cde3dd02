"""The agent's way to the fabric's NATS server out of its network sandbox: a unix socket bound
into the sandbox (the in-sandbox relay listens on 127.0.0.1:4222 there) whose every connection is
carried, unread, to the NATS server (the same relay carries sandboxed agents to the fabric's LLM
gateway, its HTTP port, isolation.GATEWAY_PORT). The server authenticates the agent's own NATS user and
enforces its subject permissions (agents/nats_users.py); the relay only gives it the route."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from agent_fabric.agents.egress_proxy import copy_stream


class NatsRelay:
    def __init__(self, path: Path, host: str, port: int) -> None:
        self.path = path
        self._host = host
        self._port = port
        self._server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._carry, path=str(self.path))

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._open.add(task)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(self._host, self._port), 10)
            await asyncio.gather(copy_stream(reader, up_writer), copy_stream(up_reader, writer))
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._open.discard(task)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
