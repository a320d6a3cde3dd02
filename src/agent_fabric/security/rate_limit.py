"""Per-credential token buckets: a burst, then a sustained rate; 429 with Retry-After beyond it.

Per replica: with N replicas a credential may reach N times the rate, which KEDA-scaled
deployments should size for. The table is bounded (least recently seen credentials go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict

MAX_TRACKED = 100_000


class RateLimiter:
    def __init__(self, per_second: float, burst: int) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, credential: str) -> float | None:
        """Take one request's token; None if allowed, else seconds until one is available."""
        now = time.monotonic()
        tokens, last = self._buckets.pop(credential, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[credential] = (tokens - 1.0, now)
            self._trim()
            return None
        self._buckets[credential] = (tokens, now)
        return (1.0 - tokens) / self._rate

    def _trim(self) -> None:
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
