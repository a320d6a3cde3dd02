"""What of a call's prompt and completion an audit entry keeps, for tenants that turn it on.

Free text is redacted before it is recorded: the audit writer's own masking (bearer tokens,
JWTs, URL passwords) plus `name=value` / `name: value` pairs whose name says secret (password,
token, api key, secret) and provider-style keys (`sk-...`). Long texts are cut (the writer cuts
oversized payloads to a preview as well).
"""

from __future__ import annotations

import re
from typing import Any

from agent_fabric.telemetry.logging import redact

MAX_TEXT = 4000
_PAIRS = re.compile(
    r"(?i)\b((?:pass(?:word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)\s*[=:]\s*)\S+"
)
_PROVIDER_KEYS = re.compile(r"\b(sk|pk|rk|afk)-[A-Za-z0-9_-]{8,}")


def redact_text(text: str) -> str:
    text = _PROVIDER_KEYS.sub("[redacted-key]", _PAIRS.sub(r"\1[redacted]", redact(text)))
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


def transcript(request_body: dict[str, Any], completion: str) -> dict[str, Any]:
    """The prompt (chat messages or embedding input) and the completion, redacted."""
    prompt = request_body.get("messages") if "messages" in request_body else request_body.get("input")
    return {"messages": _redacted(prompt), "completion": redact_text(completion)}
