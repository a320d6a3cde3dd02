"""Structured logs: one JSON object per line, with whatever `extra=` the call site gave and the
correlation ids bound where the work came in (log_context.py: request, trace, span, job, tenant, agent).

Secrets are never passed to log calls (settings hold them as SecretStr); as a second line of
defence, bearer tokens and URL passwords are masked in every message and field.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from agent_fabric.telemetry.log_context import CORRELATION_KEYS, CorrelationFilter

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_SECRETS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"), "[redacted-jwt]"),
    (re.compile(r"(://[^:/@\s]*:)[^@/\s]+@"), r"\1[redacted]@"),
]


# Every secret pattern above needs one of these; most log fields have none, and one search is
# cheaper than three substitutions (a line carries a dozen fields with the correlation ids).
_MAY_HOLD_SECRET = re.compile(r"(?i)bearer|eyJ|://")


def redact(text: str) -> str:
    if not _MAY_HOLD_SECRET.search(text):
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(doc, default=str).decode()


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # Plain-text lines keep the correlation ids too, so they can be grepped for one task.
        ids = " ".join(f"{key}={getattr(record, key)}" for key in CORRELATION_KEYS if hasattr(record, key))
        return redact(f"{text} [{ids}]" if ids else text)


def configure_logging(level: str, *, json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(
        JsonFormatter() if json else RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
