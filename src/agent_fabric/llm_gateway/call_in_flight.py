"""One call on its way through the gateway: what it asked, where it went, what came back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from agent_fabric.llm_gateway import estimator
from agent_fabric.llm_gateway.budget_guard import CallReservation
from agent_fabric.llm_gateway.keys import KeyGrant
from agent_fabric.llm_gateway.metering import CallUsage
from agent_fabric.llm_gateway.token_relay import TokenRelay
from agent_fabric.settings import LlmUpstream


@dataclass
class CallInFlight:
    """One call in flight: what it asked, where it went, what came back."""

    id: str
    grant: KeyGrant
    endpoint: str
    model: str
    body: dict[str, Any]
    upstream: LlmUpstream
    reservation: CallReservation
    prompt_estimate: int
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    ttft_ms: float | None = None
    completion_text: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    finished: bool = False  # metered and settled (exactly once)

    def read_answer(self, content: bytes) -> None:
        """Note what a whole (not streamed) answer says: its usage and its text."""
        self.ttft_ms = (time.perf_counter() - self.started) * 1000
        try:
            payload = orjson.loads(content)
        except orjson.JSONDecodeError:  # passed on as it came; counted by the estimate
            return
        if not isinstance(payload, dict):
            return
        self.usage = payload.get("usage")
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict):
                self.completion_text.append(str((choice.get("message") or {}).get("content") or ""))

    def read_chunk(self, data: str, relay: TokenRelay | None) -> None:
        """Note what one streamed chunk says (usage, first token, text) and relay its deltas."""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(chunk, dict):
            return
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or ()
        if choices and self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.started) * 1000
        for choice in choices:
            if isinstance(choice, dict):
                self.completion_text.append(str((choice.get("delta") or {}).get("content") or ""))
        if relay is not None:
            relay.push_chunk(chunk)

    def usage_for(self, outcome: str) -> CallUsage:
        """The upstream's usage, or (none reported) the estimate, marked so."""
        usage = self.usage
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            completion = usage.get("completion_tokens")
            return CallUsage(usage["prompt_tokens"], completion if isinstance(completion, int) else 0, False)
        if outcome in ("upstream_error", "upstream_unreachable"):
            return CallUsage(0, 0, False)
        # No usage from upstream: the prompt estimate and the text that came back, marked estimated.
        return CallUsage(self.prompt_estimate, estimator.text_tokens("".join(self.completion_text)), True)
