"""Refuse over-nested JSON request bodies with 400 problem JSON before any route parses them.

Every HTTP route that takes JSON (FastAPI's body parsing, the CloudEvents SDK, orjson) would
otherwise meet `[[[[...` in a parser that recurses per level; one middleware keeps the limit the
same on every route, present and future. Bodies are already capped by BodySizeLimit (outside
this one), so buffering a body to measure it is bounded.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_fabric.events.json_limits import json_depth
from agent_fabric.inbound.api.refusals import refusal


def _is_json(scope: Scope) -> bool:
    """No content type (FastAPI parses those as JSON too), application/json or any +json type."""
    raw: bytes | None = dict(scope.get("headers") or []).get(b"content-type")
    if raw is None:
        return True
    media = raw.split(b";", 1)[0].strip().lower()
    return media.endswith(b"/json") or media.endswith(b"+json")


class JsonDepthLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS") or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth(body, stop_after=self.limit) > self.limit:
            response = refusal(
                400,
                "json_too_deep",
                "Invalid request",
                f"JSON nests more than {self.limit} levels deep",
                str(scope.get("path", "")),
            )
            await response(scope, receive, send)
            return
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that hands out `messages` first, then whatever the connection brings."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
