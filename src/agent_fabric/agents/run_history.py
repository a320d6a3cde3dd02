"""Session history writes off the process-management path: a process's start and end are written
in the background (the end after its start), so a slow or locked database never delays a restart,
a heartbeat verdict or a crash-loop decision. `flush()` waits for what is pending (the runs API
and stops call it, so a reader on this replica sees every run that ended here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from agent_fabric.storage.agent_run_store import AgentRunStore

log = logging.getLogger(__name__)


class RunHistory:
    def __init__(self, store: AgentRunStore) -> None:
        self.store = store
        self._starts: dict[str, asyncio.Task[str | None]] = {}  # process name -> its run id, once written
        self._pending: set[asyncio.Task[Any]] = set()

    def started(self, agent_id: str, tenant_id: str, process: str, pid: int | None, at: float) -> None:
        self._starts[process] = self._track(self._start(agent_id, tenant_id, process, pid, at))

    def ended(self, process: str, **fields: Any) -> None:
        start = self._starts.pop(process, None)
        if start is not None:
            self._track(self._end(start, fields))

    def run_id(self, process: str) -> str | None:
        """The live process's run id, once its start is recorded."""
        start = self._starts.get(process)
        if start is None or not start.done() or start.cancelled():
            return None
        return start.result()

    async def flush(self, seconds: float = 10.0) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _track(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _start(self, agent_id: str, tenant_id: str, process: str, pid: int | None, at: float) -> str | None:
        try:
            return await self.store.started(agent_id, tenant_id, process, pid, at)
        except Exception as exc:  # history is a record, not a reason to refuse work
            log.warning("process run not recorded", extra={"agent_id": agent_id, "error": str(exc)[:300]})
            return None

    async def _end(self, start: asyncio.Task[str | None], fields: dict[str, Any]) -> None:
        run_id = await start
        if run_id is None:
            return
        try:
            await self.store.ended(run_id, **fields)
        except Exception as exc:
            log.warning("process run end not recorded", extra={"run_id": run_id, "error": str(exc)[:300]})
