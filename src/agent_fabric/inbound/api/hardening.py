"""HTTP hardening: security headers on every response, CORS only when origins are configured."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_fabric.inbound.api.json_depth import JsonDepthLimit
from agent_fabric.inbound.api.refusals import GATEWAY_PREFIX, refusal
from agent_fabric.settings import Settings

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # An API serves no documents to render; nothing may be loaded or framed from its responses.
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Cross-Origin-Resource-Policy": "same-origin",
}
UNCACHED_PREFIXES = ("/api", "/ws")


class BodySizeLimit:
    """Refuse request bodies over the limit with 413 before any route reads them, whether the size
    is declared (Content-Length) or only discovered while streaming (chunked). `gateway_limit`
    applies under /v1/: model prompts are larger than anything else the API takes."""

    def __init__(self, app: ASGIApp, limit: int, gateway_limit: int) -> None:
        self.app = app
        self._limit = limit
        self._gateway_limit = gateway_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = self._gateway_limit if path.startswith(GATEWAY_PREFIX) else self._limit
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, send, limit)
            return
        received = 0
        exceeded = False
        replaced = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Reading stops here; whatever the route answers to the cut body is replaced below.
                    exceeded = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if exceeded and message["type"] == "http.response.start" and not replaced:
                replaced = True
                await self._refuse(scope, send, limit)
            if not replaced:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, scope: Scope, send: Send, limit: int) -> None:
        response = refusal(
            413,
            "payload_too_large",
            "Payload too large",
            f"request body exceeds the limit of {limit} bytes",
            str(scope.get("path", "")),
        )
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class SecurityHeaders:
    """Security headers on every HTTP response (a route's own value wins), `no-store` under /api and
    /ws. Plain ASGI: a BaseHTTPMiddleware would pipe every streamed body (SSE, LLM token streams)
    through an extra memory stream and task."""

    _HEADERS = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        uncached = str(scope.get("path", "")).startswith(UNCACHED_PREFIXES)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in self._HEADERS if name not in present)
                if uncached:
                    headers = [(n, v) for n, v in headers if n.lower() != b"cache-control"]
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def install_hardening(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(SecurityHeaders)

    # Inside the size limit (added later, so it runs first): a body is capped before it is buffered.
    app.add_middleware(JsonDepthLimit, limit=settings.max_json_depth)
    # Task events have their own limit (MAX_EVENT_BYTES); nothing else the API takes is larger,
    # but for the LLM gateway's prompts (LLM_MAX_REQUEST_BYTES).
    app.add_middleware(
        BodySizeLimit, limit=settings.max_event_bytes + 64 * 1024, gateway_limit=settings.llm.max_request_bytes
    )

    origins = settings.http.cors_origin_list
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            allow_credentials=False,
        )
