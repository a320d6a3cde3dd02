"""The HTTP door's telemetry: a request id, correlated log lines, and request metrics.

Outermost ASGI middleware (pure ASGI, so a streamed response is not buffered):
- request id: the caller's `X-Request-ID` when it is a sane token, else a new one; bound into
  every log line written while the request is served, and returned in the response header;
- one `http request` log line per request (INFO; probes and scrapes at DEBUG), with route
  template, method, status and duration. The path is logged without its query string (a
  WebSocket or SSE client may carry a credential there);
- `agent_fabric_http_requests_total{route,method,status}` and the duration histogram, labelled
  by the route *template* (`/api/v1/tasks/{job_id}`), so job ids never become label values.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_fabric.telemetry.log_context import bound

log = logging.getLogger("agent_fabric.http")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
UNMATCHED = "unmatched"  # the route label of requests no route took (404s of random paths)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's request id if it is a reasonable token, else a fresh one."""
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            if _SANE_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The matched route's path template; set in the scope by the router once it matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else UNMATCHED


class RequestTelemetry:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers") or [])
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before responding

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "websocket.accept":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        with bound(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if scope["type"] == "http":
                    self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = route_template(scope)
        method = str(scope.get("method", "GET"))
        ops = _ops_of(scope)
        if ops is not None:
            ops.http_requests.labels(route, method, str(status)).inc()
            ops.http_duration.labels(route, method).observe(elapsed)
        path = str(scope.get("path", ""))
        level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "http request",
                extra={
                    "method": method,
                    "path": path,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )


def _ops_of(scope: Scope) -> Any:
    """The app's operation metrics, once its lifespan opened the fabric (None before)."""
    app = scope.get("app")
    fabric = getattr(getattr(app, "state", None), "fabric", None)
    return getattr(getattr(fabric, "metrics", None), "ops", None)
