"""AgentZeroClient: Agent Zero's API-key HTTP endpoints, with retries and clear failure codes.

- `POST /api/<name>` with `X-API-KEY`; instances older than v0.9.9 serve `/<name>`, so a
  text/plain "API endpoint not found" 404 switches this client to the bare paths for good.
- Retries with exponential backoff and jitter on connection errors and 502/503/504 only. A 500
  from `api_message` means the agent itself failed; repeating it would run the agent twice.
- Failures map to codes users can act on: agent_unreachable, agent_auth_failed, agent_error,
  agent_context_not_found, timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from agent_fabric.errors import TaskFailure
from agent_fabric.telemetry.logging import redact

log = logging.getLogger(__name__)

# observe(instance, operation, outcome, seconds): one finished call (outcome "ok" or a failure code).
CallObserver = Callable[[str, str, str, float], None]

RETRYABLE_STATUS = frozenset({502, 503, 504})
# api_message names a new chat only when the agent's run ends, so a chat is opened with a message
# that costs one short turn, and the real work is sent once its context id is known.
PRIMING_MESSAGE = (
    "You are being connected to agent-fabric. Reply with the single word READY and do nothing else; "
    "the task follows in the next message."
)
LOG_LENGTH = 100_000  # api_log_get's `length` is unreliable below the item count (upstream #1287)


class AgentZeroError(TaskFailure):
    """A failure talking to Agent Zero, with its code (see module docstring)."""


@dataclass(frozen=True)
class Reply:
    context_id: str
    response: str


# Checks run before every request (security/outbound_urls.py for tenant-registered instances).


class AgentZeroClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 300.0,
        retries: int = 3,
        backoff: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
        observe: CallObserver | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._observe = observe
        self._instance = redact(self.base_url)
        self._key = api_key
        self._retries = retries
        self._backoff = backoff
        self._prefix = "/api"
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            # Redirects are never followed: a registered URL must not lead the fabric to another host.
            follow_redirects=False,
            transport=transport,  # a tenant-registered URL: dials only addresses its outbound rules pass
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> dict[str, Any]:
        """`{"version": ..., "gitinfo": ...}`; the health route needs no key."""
        body = await self._call("health", {}, method="GET", authed=False)
        gitinfo = body.get("gitinfo") or {}
        return {"version": gitinfo.get("version"), "gitinfo": gitinfo or None, "error": body.get("error")}

    async def message(
        self,
        message: str,
        *,
        context_id: str | None = None,
        agent_profile: str | None = None,
        lifetime_hours: float | None = None,
    ) -> Reply:
        """Send a message and wait for the whole agent run (Agent Zero's api_message blocks)."""
        payload: dict[str, Any] = {"message": message, "context_id": context_id or ""}
        if agent_profile and not context_id:
            payload["agent_profile"] = agent_profile
        if lifetime_hours is not None:
            payload["lifetime_hours"] = lifetime_hours
        body = await self._call("api_message", payload)
        return Reply(context_id=str(body["context_id"]), response=str(body.get("response", "")))

    async def open_chat(self, *, agent_profile: str | None = None, lifetime_hours: float | None = None) -> str:
        """A new chat (with `agent_profile`, if given): its context id, after one priming turn."""
        reply = await self.message(PRIMING_MESSAGE, agent_profile=agent_profile, lifetime_hours=lifetime_hours)
        return reply.context_id

    async def log(self, context_id: str) -> dict[str, Any]:
        body = await self._call("api_log_get", {"context_id": context_id, "length": LOG_LENGTH})
        log: dict[str, Any] = body.get("log") or {}
        return log

    async def progress(self, context_id: str) -> tuple[str, bool]:
        """The chat's latest heading and whether its agent is working (progress_active). `length`
        is 1 to keep the answer small; the items it selects are unreliable (#1287) and unused."""
        body = await self._call("api_log_get", {"context_id": context_id, "length": 1})
        log = body.get("log") or {}
        return str(log.get("progress") or ""), bool(log.get("progress_active"))

    async def reset_chat(self, context_id: str) -> None:
        await self._call("api_reset_chat", {"context_id": context_id})

    async def terminate_chat(self, context_id: str) -> None:
        await self._call("api_terminate_chat", {"context_id": context_id})

    async def _call(self, name: str, payload: dict[str, Any], *, method: str = "POST", authed: bool = True) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._call_with_retries(name, payload, method=method, authed=authed)
        except AgentZeroError as exc:
            outcome = exc.code
            raise
        except BaseException:
            outcome = "cancelled"
            raise
        finally:
            elapsed = time.perf_counter() - started
            if self._observe is not None:
                self._observe(self._instance, name, outcome, elapsed)
            log.debug(
                "agent zero call",
                extra={"instance": self._instance, "operation": name, "outcome": outcome, "duration_s": elapsed},
            )

    async def _call_with_retries(
        self, name: str, payload: dict[str, Any], *, method: str = "POST", authed: bool = True
    ) -> Any:
        headers = {"X-API-KEY": self._key} if authed else {}
        for attempt in range(self._retries + 1):
            try:
                response = await self._http.request(
                    method, f"{self._prefix}/{name}", json=payload or None, headers=headers
                )
            except httpx.TimeoutException:
                raise AgentZeroError(
                    "timeout", f"Agent Zero at {self.base_url} did not answer {name} in time"
                ) from None
            except httpx.TransportError as exc:
                if attempt < self._retries:
                    await self._sleep(attempt)
                    continue
                raise AgentZeroError("agent_unreachable", f"Agent Zero at {self.base_url}: {exc}") from None
            if response.status_code == 404 and self._prefix and _endpoint_missing(response):
                self._prefix = ""  # an instance older than v0.9.9: bare paths from now on
                return await self._call_with_retries(name, payload, method=method, authed=authed)
            if response.status_code in RETRYABLE_STATUS and attempt < self._retries:
                await self._sleep(attempt)
                continue
            return _decode(name, response)
        raise AgentZeroError("agent_unreachable", f"Agent Zero at {self.base_url} kept failing {name}")

    async def _sleep(self, attempt: int) -> None:
        await asyncio.sleep(self._backoff * (2**attempt) * (0.5 + random.random()))  # full jitter, no thundering herd


def _endpoint_missing(response: httpx.Response) -> bool:
    return "API endpoint not found" in response.text


def _decode(name: str, response: httpx.Response) -> Any:
    if response.status_code == 401:
        raise AgentZeroError("agent_auth_failed", f"Agent Zero refused the API key ({response.text.strip()[:200]})")
    body = _json_or_text(response)
    if response.status_code == 404:
        raise AgentZeroError("agent_context_not_found", f"{name}: {_error_text(body)}")
    if response.status_code >= 400:
        raise AgentZeroError("agent_error", f"{name} answered {response.status_code}: {_error_text(body)}")
    if not isinstance(body, dict):
        raise AgentZeroError("agent_error", f"{name} answered something that is not a JSON object")
    return body


def _json_or_text(response: httpx.Response) -> Any:
    # Agent Zero builds some error bodies with f-strings; a quote in the text breaks the JSON.
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("error") or body)[:500]
    return str(body).strip()[:500]
