"""Group commit: many concurrent writers, one transaction per flush.

At a thousand tasks a second, a transaction per task state change would make the database the
bottleneck (and SQLite allows one writer at a time anyway). Writers call `submit` and await
their own result; the flusher folds everything queued within `linger` into one transaction,
grouped by operation so each group is one statement. Under load batches grow by themselves:
while one flush is in the database, the next one fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.telemetry.operation_metrics import OperationMetrics

log = logging.getLogger(__name__)

# One statement (or a few) for a whole group of like items; returns one result per item.
BatchOp = Callable[[AsyncConnection, Sequence[Any]], Awaitable[Sequence[Any]]]


class WriteBatcher:
    """`flushers` transactions may be in flight at once (1 for SQLite, a single writer). One
    caller's writes never overlap: each awaits the previous, so concurrency never reorders them."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        linger_ms: float,
        max_items: int,
        flushers: int = 1,
        metrics: OperationMetrics | None = None,
        name: str = "shared",
    ) -> None:
        self._engine = engine
        self.metrics = metrics  # handed on to writers opened beside this one
        # Batch size and commit latency per writer (agent_fabric_write_batch_size / _commit_seconds).
        self._sizes = metrics.write_batch_size.labels(name) if metrics else None
        self._commits = (
            (metrics.write_commit_seconds.labels(name, "ok"), metrics.write_commit_seconds.labels(name, "error"))
            if metrics
            else None
        )
        self._linger = linger_ms / 1000
        self._max = max_items
        self._queue: asyncio.Queue[tuple[BatchOp, Any, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(flushers)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def submit(self, op: BatchOp, item: Any) -> Any:
        if self._task is None:
            raise RuntimeError("WriteBatcher is not running")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, item, fut))
        return await fut

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="write-batcher")

    async def shutdown(self) -> None:
        """Flush what is queued, then stop. Idempotent."""
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        while not self._queue.empty():
            await self._flush(self._take_batch([self._queue.get_nowait()]))

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            await self._slots.acquire()
            if self._linger:
                await asyncio.sleep(self._linger)
            flush = asyncio.create_task(self._flush_then_release(self._take_batch([first])))
            self._in_flight.add(flush)
            flush.add_done_callback(self._in_flight.discard)

    def _take_batch(
        self, batch: list[tuple[BatchOp, Any, asyncio.Future[Any]]]
    ) -> list[tuple[BatchOp, Any, asyncio.Future[Any]]]:
        while len(batch) < self._max and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _flush_then_release(self, batch: list[tuple[BatchOp, Any, asyncio.Future[Any]]]) -> None:
        try:
            await self._flush(batch)
        finally:
            self._slots.release()

    async def _flush(self, batch: list[tuple[BatchOp, Any, asyncio.Future[Any]]]) -> None:
        groups: dict[BatchOp, list[tuple[Any, asyncio.Future[Any]]]] = {}
        for op, item, fut in batch:
            groups.setdefault(op, []).append((item, fut))
        if self._sizes is not None:
            self._sizes.observe(len(batch))
        started = time.perf_counter()
        try:
            async with self._engine.begin() as conn:
                results = [await op(conn, [item for item, _ in entries]) for op, entries in groups.items()]
        except Exception as exc:
            if self._commits is not None:
                self._commits[1].observe(time.perf_counter() - started)
            if len(batch) == 1:
                _settle(batch[0][2], exc=exc)
                return
            # One bad item must not fail its neighbours: retry each alone, so only it fails.
            log.warning("batched write failed, retrying items one by one", extra={"error": str(exc)})
            for op, item, fut in batch:
                await self._flush_one(op, item, fut)
            return
        if self._commits is not None:
            self._commits[0].observe(time.perf_counter() - started)
        for (_, entries), group_results in zip(groups.items(), results, strict=True):
            for (_, fut), result in zip(entries, group_results, strict=True):
                _settle(fut, result=result)

    async def _flush_one(self, op: BatchOp, item: Any, fut: asyncio.Future[Any]) -> None:
        try:
            async with self._engine.begin() as conn:
                (result,) = await op(conn, [item])
        except Exception as exc:
            _settle(fut, exc=exc)
        else:
            _settle(fut, result=result)


def _settle(fut: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():  # the waiter was cancelled
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
