"""Token counts when the upstream reports none: a documented estimate, marked `estimated`.

No tokenizer package is a dependency, so the gateway uses the rule of thumb OpenAI documents for
English text: about 4 characters per token, plus a few tokens of framing per chat message. It
over-counts code and under-counts some scripts; calls counted this way are flagged in llm_calls
(`estimated`) and in their audit entry, so a tenant knows which numbers are exact.
"""

from __future__ import annotations

import math
from typing import Any

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4  # role and separators around each chat message
TOKENS_PER_REPLY = 3  # the assistant turn the model is primed with


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a multi-part content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def chat_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a chat completion request (messages, and tool definitions if any)."""
    total = TOKENS_PER_REPLY
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE + text_tokens(_content_text(message.get("content")))
        if message.get("tool_calls"):
            total += text_tokens(str(message["tool_calls"]))
    if body.get("tools"):
        total += text_tokens(str(body["tools"]))
    return total


def embedding_input_tokens(body: dict[str, Any]) -> int:
    raw = body.get("input")
    items = raw if isinstance(raw, list) else [raw]
    # Token-id inputs ([1, 2, 3] or [[...], ...]) count one per id.
    total = 0
    for item in items:
        if isinstance(item, str):
            total += text_tokens(item)
        elif isinstance(item, int):
            total += 1
        elif isinstance(item, list):
            total += len(item)
    return total


def max_completion_tokens(body: dict[str, Any], default: int) -> int:
    """What the call may produce: max_completion_tokens or max_tokens, else the configured default."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default
