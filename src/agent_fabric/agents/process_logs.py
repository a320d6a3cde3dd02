"""What an agent's processes wrote to stderr (and stray stdout): bounded, aged out, secrets masked.

Kept in memory per agent on the replica that runs it (GET /api/v1/agents/{id}/logs reads it): the
last `max_lines` lines no older than `retention_seconds`. Masking runs on the way in, so a secret
an agent prints never sits in memory or reaches an API reader: bearer tokens, JWTs and URL
passwords (telemetry.logging.redact), and `key=value` pairs whose key names a secret.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent_fabric.telemetry.logging import redact

MAX_LINE_CHARS = 4000
_SECRET_PAIR = re.compile(
    r"(?i)\b([A-Za-z0-9_.-]*(?:password|passwd|secret|token|api[_-]?key|private[_-]?key)[A-Za-z0-9_.-]*)"
    r"(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
)


def mask(line: str) -> str:
    return _SECRET_PAIR.sub(r"\1\2[redacted]", redact(line))


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float
    process: str
    stream: str
    text: str

    def as_json(self) -> dict[str, Any]:
        when = datetime.fromtimestamp(self.at, UTC).isoformat().replace("+00:00", "Z")
        return {"time": when, "process": self.process, "stream": self.stream, "line": self.text}


class AgentLogs:
    def __init__(self, max_lines: int = 2000, retention_seconds: float = 3600.0) -> None:
        self._lines: deque[LogLine] = deque(maxlen=max_lines)
        self._retention = retention_seconds

    def add(self, process: str, stream: str, text: str) -> None:
        self._lines.append(LogLine(time.time(), process, stream, mask(text.rstrip("\n")[:MAX_LINE_CHARS])))

    def tail(self, limit: int = 200, process: str | None = None) -> list[dict[str, Any]]:
        cutoff = time.time() - self._retention
        while self._lines and self._lines[0].at < cutoff:
            self._lines.popleft()
        lines = [line for line in self._lines if process is None or line.process == process]
        return [line.as_json() for line in lines[-limit:]]
