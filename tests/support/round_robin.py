"""A TCP load balancer for tests: each new connection goes to the next backend in turn.

Stands for the Kubernetes Service in front of fabric replicas, so one URL reaches all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

from tests.support.nats_server import free_port


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.asynccontextmanager
async def round_robin(backends: list[tuple[str, int]], port: int | None = None) -> AsyncIterator[int]:
    """Listen on `port` (default: a free one), forward connections round-robin; yields the port."""
    turn = itertools.cycle(backends)
    pipes: set[asyncio.Task[None]] = set()

    async def on_connect(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        host, backend_port = next(turn)
        try:
            server_reader, server_writer = await asyncio.open_connection(host, backend_port)
        except OSError:
            client_writer.close()
            return
        for task in (
            asyncio.create_task(_pipe(client_reader, server_writer)),
            asyncio.create_task(_pipe(server_reader, client_writer)),
        ):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    port = port or free_port()
    server = await asyncio.start_server(on_connect, "127.0.0.1", port)
    try:
        yield port
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await server.wait_closed()
