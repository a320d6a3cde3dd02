"""A streamed completion's tokens, relayed to its watchers as they arrive.

A task key's call goes to the task's progress bus (Redis `langgraph:stream:{job_id}`, else NATS),
so SSE followers of the task see them; an instance key's call goes to the answering Agent Zero
session's WebSocket (answering_session.py). Kind `token` for content deltas, `tool_call` for
tool-call deltas. They are live-only: not written to an event log, so a reconnect does not
replay them.

The agent's stream never waits for watchers: `push` appends to a bounded buffer (oldest dropped
when full, counted in `dropped`) and a pump task of its own publishes from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

TOKEN = "token"
TOOL_CALL = "tool_call"  # outbound/sse.py LIVE_ONLY_KINDS names both


class TokenRelay:
    def __init__(
        self,
        publish: Callable[[dict[str, Any]], Awaitable[None]],
        envelope: dict[str, Any],
        call_id: str,
        model: str,
        capacity: int,
    ) -> None:
        self._publish = publish
        self._base = envelope
        self._call = {"call_id": call_id, "model": model}
        self._pending: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._wake = asyncio.Event()
        self._closing = False
        self.dropped = 0
        self._pump = asyncio.create_task(self._run(), name=f"llm-relay {call_id}")

    def push_chunk(self, chunk: dict[str, Any]) -> None:
        """Relay the deltas of one streamed chunk (content and tool calls, per choice)."""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            index = choice.get("index", 0)
            if delta.get("content"):
                self._push(TOKEN, {"index": index, "text": delta["content"]})
            if delta.get("tool_calls"):
                self._push(TOOL_CALL, {"index": index, "tool_calls": delta["tool_calls"]})

    def _push(self, kind: str, data: dict[str, Any]) -> None:
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1  # the deque drops the oldest itself
        seq = next(self._seq)
        self._pending.append(
            {
                **self._base,
                "id": f"{self._call['call_id']}-{seq}",
                "kind": kind,
                "data": {**self._call, "seq": seq, **data},
                "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
        )
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                event = self._pending.popleft()
                with contextlib.suppress(Exception):  # live relay is best effort; the call goes on
                    await self._publish(event)
            if self._closing:
                return

    def close(self) -> asyncio.Task[None]:
        """No more chunks: the pump publishes what is buffered and ends. Returns the pump."""
        self._closing = True
        self._wake.set()
        return self._pump
