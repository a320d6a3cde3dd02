"""A step run in the background every few seconds: sweeps, checks, reaps.

Every replica runs its own; the steps are written so that any replica may do the work and each
outcome happens once (conditional UPDATEs). A failing step is logged and tried again next round:
a database or NATS blip must not end the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, seconds: float, step: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self._seconds = seconds
        self._step = step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        """Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._seconds)
            try:
                await self._step()
            except Exception as exc:
                log.warning("%s failed; retrying next round", self.name, extra={"error": str(exc)[:300]})


def until_short(sweep: Callable[[], Awaitable[int]], batch: int) -> Callable[[], Awaitable[None]]:
    """A step that sweeps batch after batch until one comes back short (a backlog drains in one round)."""

    async def step() -> None:
        while await sweep() == batch:
            pass

    return step
