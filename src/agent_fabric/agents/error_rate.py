"""When an agent's errors (failed processes, failed tasks) come too fast: `threshold` within
`window` seconds raises one alert, then at most one more per window while it lasts. Pure."""

from __future__ import annotations

from collections import deque


class ErrorRate:
    def __init__(self, threshold: int, window: float) -> None:
        self.threshold = threshold
        self.window = window
        self._times: deque[float] = deque()
        self._alerted_at: float | None = None

    def record(self, now: float) -> int | None:
        """Count an error at `now`; the number of errors in the window when an alert is due, else None."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) < self.threshold:
            return None
        if self._alerted_at is not None and now - self._alerted_at < self.window:
            return None
        self._alerted_at = now
        return len(self._times)
