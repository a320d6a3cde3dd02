"""Batched audit writes off the hot path, and never lost.

`record()` only appends to memory; a background loop writes everything pending in one statement
every AUDIT_FLUSH_INTERVAL_MS (sooner when a batch fills). A failed write keeps the entries and is
retried with backoff for as long as the database is away. Past AUDIT_BUFFER_MAX pending entries,
or at shutdown if the database still does not answer, entries are appended to a spool file under
STATE_DIR/audit-spool and written once the database is back (at the next start at the latest).
Entry ids are unique in the table, so a replayed spool never doubles an entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections import deque
from pathlib import Path

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.audit.entries import AuditEntry, insert_entries, insert_rows, row_from_spool
from agent_fabric.settings import AuditSettings
from agent_fabric.telemetry.metrics import FabricMetrics

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0
SHUTDOWN_ATTEMPTS = 3


class AuditWriter:
    def __init__(self, engine: AsyncEngine, cfg: AuditSettings, spool_dir: Path, metrics: FabricMetrics) -> None:
        self._engine = engine
        self._cfg = cfg
        self._spool_dir = spool_dir
        self._metrics = metrics
        self._pending: deque[AuditEntry] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._writing = asyncio.Lock()  # the loop and flush() never write the same batch twice
        self._in_flight = 0

    @property
    def pending(self) -> int:
        """Entries not yet in the database (waiting or in flight)."""
        return len(self._pending) + self._in_flight

    def record(self, entry: AuditEntry) -> None:
        self._pending.append(entry)
        self._metrics.audit_pending.set(len(self._pending))
        if len(self._pending) >= self._cfg.batch_max:
            self._wake.set()
        if len(self._pending) > self._cfg.buffer_max:
            self._spill()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def flush(self) -> bool:
        """Write everything pending now (and any spool); True if it all landed."""
        return await self._write_pending() and await self._replay_spool()

    async def shutdown(self) -> None:
        """Stop the loop, write what is pending; spool to disk whatever the database refuses. Idempotent."""
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _ in range(SHUTDOWN_ATTEMPTS):
            if await self._write_pending():
                return
            await asyncio.sleep(0.5)
        self._spill()

    async def _run(self) -> None:
        await self._replay_spool()
        interval = self._cfg.flush_interval_ms / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()
            if await self._write_pending():
                if self._failures:
                    log.info("audit writes recovered", extra={"after_failures": self._failures})
                    self._failures = 0
                    await self._replay_spool()
            else:
                self._failures += 1
                await asyncio.sleep(min(MAX_BACKOFF_SECONDS, 0.2 * 2 ** min(self._failures, 5)))

    async def _write_pending(self) -> bool:
        async with self._writing:
            return await self._write_pending_locked()

    async def _write_pending_locked(self) -> bool:
        # What is pending now, in batches; entries arriving meanwhile wait for the next round
        # (chasing them would turn group commit into a transaction per entry).
        remaining = len(self._pending)
        while remaining > 0 and self._pending:
            # Taken out while in flight, so a spill meanwhile cannot take (or lose) them; put back
            # in front on any failure or cancellation (a batch that did commit is then written
            # again, and its entry ids make that a no-op).
            size = min(remaining, len(self._pending), self._cfg.batch_max)
            batch = [self._pending.popleft() for _ in range(size)]
            remaining -= size
            self._in_flight = len(batch)
            try:
                async with self._engine.begin() as conn:
                    await insert_entries(conn, batch)
            except BaseException as exc:
                self._in_flight = 0
                self._pending.extendleft(reversed(batch))
                if not isinstance(exc, Exception):
                    raise
                self._metrics.audit_write_failures.inc()
                log.warning("audit write failed; entries kept for retry", extra={"error": str(exc)[:300]})
                return False
            self._in_flight = 0
            self._metrics.audit_entries.inc(len(batch))
            self._metrics.audit_pending.set(len(self._pending))
        return True

    def _spill(self) -> None:
        """Move every pending entry to a new spool file (synced to disk)."""
        if not self._pending:
            return
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        path = self._spool_dir / f"{os.getpid()}-{secrets.token_hex(6)}.jsonl"
        rows = [self._pending.popleft().row() for _ in range(len(self._pending))]
        with path.open("ab") as fh:
            for row in rows:
                fh.write(orjson.dumps(row, default=str) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._metrics.audit_pending.set(0)
        log.warning("audit entries spooled to disk until the database answers", extra={"entries": len(rows)})

    async def _replay_spool(self) -> bool:
        if not self._spool_dir.is_dir():
            return True
        async with self._writing:
            return await self._replay_spool_locked()

    async def _replay_spool_locked(self) -> bool:
        for path in sorted(self._spool_dir.glob("*.jsonl")):
            try:
                rows = [row_from_spool(orjson.loads(line)) for line in path.read_bytes().splitlines() if line]
            except FileNotFoundError:
                continue  # another process sharing STATE_DIR replayed it
            try:
                for start in range(0, len(rows), self._cfg.batch_max):
                    async with self._engine.begin() as conn:
                        await insert_rows(conn, rows[start : start + self._cfg.batch_max])
            except Exception as exc:
                log.warning("audit spool replay failed; will retry", extra={"error": str(exc)[:300]})
                return False
            path.unlink(missing_ok=True)
            self._metrics.audit_entries.inc(len(rows))
            log.info("audit spool replayed", extra={"file": path.name, "entries": len(rows)})
        return True
