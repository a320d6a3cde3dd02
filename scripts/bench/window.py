"""The throughput benchmark's load shape, shared by the fabric, the raw round trip and the peers:
N tasks, `inflight` outstanding, submit-to-result latency per task."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Window:
    """Keeps `inflight` tasks outstanding. A run's result listener calls `finished(job)` for each
    result it sees; `run(submit)` submits N jobs and returns rate and latency figures."""

    def __init__(self, n: int, inflight: int) -> None:
        self.n = n
        self._sent: dict[str, float] = {}
        self._latencies: list[float] = []
        self._slots = asyncio.Semaphore(inflight)
        self._done = asyncio.Event()

    def finished(self, job: str) -> None:
        start = self._sent.pop(job, None)
        if start is None:  # a result of another run (warm-up) or a duplicate
            return
        self._latencies.append(time.perf_counter() - start)
        self._slots.release()
        if len(self._latencies) == self.n:
            self._done.set()

    async def run(self, submit: Callable[[str], Awaitable[None]]) -> dict[str, float]:
        run_id = uuid.uuid4().hex[:6]  # job ids differ between runs (a warm-up's late results)
        began = time.perf_counter()
        for i in range(self.n):
            await self._slots.acquire()
            job = f"b{i}-{run_id}"
            # Recorded before the submit: a result may come back before the submit call returns.
            self._sent[job] = time.perf_counter()
            await submit(job)
        await asyncio.wait_for(self._done.wait(), timeout=600)
        elapsed = time.perf_counter() - began
        return {
            "rate": self.n / elapsed,
            "p50": percentile(self._latencies, 0.5) * 1000,
            "p99": percentile(self._latencies, 0.99) * 1000,
            "mean": statistics.fmean(self._latencies) * 1000,
            # The machine may be shared: its 1-minute load average as the run ends goes with the figures.
            "load": os.getloadavg()[0],
        }
