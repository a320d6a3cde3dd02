"""Following an Agent Zero chat's log: progress as items appear or change, and the final answer.

Log items change in place while the agent streams, so an item is reported again when its
heading or content changed (deduplicated by `no` plus a fingerprint). The greeting item (a
`response` at no=0) and everything before the task's own `user` item are skipped.

While the message runs, a `user` item with its words that already has a finished answer after it
is an earlier message (the same words sent before, with the chat's floor not past it because that
message's answer was taken from the reply, not from a last log read); it is never taken for the
running one, whose items are then read at the next poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from agent_fabric.agent_zero.client import AgentZeroClient, AgentZeroError

PROGRESS_CONTENT_CHARS = 2_000


def find_user_item(log: dict[str, Any], message: str, floor: int = -1) -> int | None:
    """`no` of the last user item carrying `message` after item `floor`, or None if it was never
    sent. A chat that goes on (a session, a fleet agent's chat holding earlier tasks) passes where
    its log stood before this message as `floor`, so the same words sent again are not mistaken
    for an earlier message before Agent Zero logs them."""
    found = None
    for item in log.get("items") or []:
        if item.get("type") == "user" and item.get("content") == message and int(item.get("no", -1)) > floor:
            found = int(item["no"])
    return found


def final_response(log: dict[str, Any], after: int) -> str | None:
    """The answer: the last finished `response` of agent 0 after the task's user item."""
    for item in reversed(log.get("items") or []):
        if (
            item.get("type") == "response"
            and item.get("agentno", 0) == 0
            and int(item.get("no", -1)) > after
            and (item.get("kvps") or {}).get("finished")
        ):
            return str(item.get("content", ""))
    return None


class ProgressSink(Protocol):
    """Where progress goes: a task's RunContext, or a session's event log."""

    async def progress(self, data: dict[str, Any]) -> None: ...


class LogFollower:
    def __init__(
        self,
        client: AgentZeroClient,
        context_id: str,
        ctx: ProgressSink,
        message: str,
        poll_seconds: float,
        *,
        floor: int = -1,
    ) -> None:
        self._client = client
        self._context_id = context_id
        self._ctx = ctx
        self._message = message
        self._poll = poll_seconds
        self._seen: dict[int, tuple[str, int]] = {}
        self._after: int | None = None
        self._floor = floor
        self.last_no = floor  # the newest log item seen: the next message's floor

    async def alongside(self, call: Awaitable[Any], *, read_after_answer: bool = True) -> str:
        """Await the blocking api_message while reporting progress from the log.

        `read_after_answer`: once the answer is in, read the log once more for the items of the
        run's last moments (the answer's own `response` among them). Without it, progress is what
        the polls saw while the agent worked; the answer itself comes from the reply. A failed call
        is always followed by that read (its last items say what went wrong)."""
        task = asyncio.ensure_future(call)
        try:
            while True:
                await asyncio.wait({task}, timeout=self._poll)
                answered = task.done() and not task.cancelled() and task.exception() is None
                if answered and not read_after_answer:
                    break
                finished = task.done()
                await self._report(answered=answered)
                # Stop only after a read that began once the answer was in: a read already under way
                # when the call returned may predate the final items (the answer's own `response`).
                if finished:
                    break
            reply = task.result()
        finally:
            if not task.done():
                task.cancel()
        return str(reply.response)

    async def until_answer(self, after: int) -> str:
        """Follow a chat whose task message was already sent (no=`after`) until its answer."""
        self._after = after
        idle_polls = 0
        while True:
            log = await self._report()
            answer = final_response(log, after)
            if answer is not None:
                return answer
            # Idle twice in a row with no answer: the run was reset or failed inside Agent Zero.
            idle_polls = idle_polls + 1 if log and not log.get("progress_active") else 0
            if idle_polls >= 2:
                raise AgentZeroError("agent_error", "the chat's run ended without an answer (reset or failed)")
            await asyncio.sleep(self._poll)

    async def _report(self, *, answered: bool = False) -> dict[str, Any]:
        """Report what is new in the log. `answered`: the message's call has returned its answer,
        so the last user item with its words is this message's own, answered or not."""
        try:
            log = await self._client.log(self._context_id)
        except AgentZeroError as exc:
            if exc.code == "agent_context_not_found":
                raise
            return {}  # a missed poll only delays progress; the run itself goes on
        items = log.get("items") or []
        if self._after is None:
            found = find_user_item(log, self._message, self._floor)
            if found is not None and (answered or final_response(log, found) is None):
                self._after = found
        for item in items:
            no = int(item.get("no", -1))
            self.last_no = max(self.last_no, no)
            if self._after is None or no <= self._after:
                continue
            fingerprint = (str(item.get("heading", "")), len(str(item.get("content", ""))))
            if self._seen.get(no) == fingerprint:
                continue
            self._seen[no] = fingerprint
            await self._ctx.progress(
                {
                    "no": no,
                    "type": item.get("type"),
                    "heading": item.get("heading"),
                    "content": str(item.get("content", ""))[-PROGRESS_CONTENT_CHARS:],
                    "agentno": item.get("agentno", 0),
                }
            )
        return log
