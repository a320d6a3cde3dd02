"""Keeping a long-running loop alive: a loop that crashes is logged, counted and restarted.

A fetch loop is the only reader of its priority class in this process; if it ends on an
unexpected exception, that class silently stops while everything else looks healthy. Errors
about one message are that message's business (the consumer dead-letters it), so a crash here is
a bug or an unforeseen failure; the answer is to say so loudly, restart with a growing pause,
and let `/ready` report the loop as down until it runs again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0


class SupervisedLoop:
    """Runs `body` until `stopping()`; restarts it after a crash. Not a task itself: run() is."""

    def __init__(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        *,
        stopping: Callable[[], bool],
        on_crash: Callable[[], None],
    ) -> None:
        self.name = name
        self._body = body
        self._stopping = stopping
        self._on_crash = on_crash
        self.crashes = 0
        self.down_since: float | None = None  # monotonic time of the crash it is recovering from
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.run(), name=self.name)
        return self.task

    @property
    def alive(self) -> bool:
        """Running its body now (not waiting to restart, not ended while it should run)."""
        if self.down_since is not None:
            return False
        return self.task is None or not self.task.done() or self._stopping()

    async def run(self) -> None:
        delay = FIRST_RESTART_DELAY
        while not self._stopping():
            started = time.monotonic()
            try:
                await self._body()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("loop crashed; restarting it", extra={"loop": self.name, "in_s": delay})
            else:
                if self._stopping():
                    return
                log.error("loop ended on its own; restarting it", extra={"loop": self.name, "in_s": delay})
            self.crashes += 1
            self.down_since = time.monotonic()
            if self.down_since - started > MAX_RESTART_DELAY:
                delay = FIRST_RESTART_DELAY  # it ran well for a while: this is a new failure
            self._on_crash()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)
            self.down_since = None
