"""Requests refused by the HTTP middleware, before any route: in the shape their caller parses.

Everything but the LLM gateway answers in problem JSON (RFC 9457). The gateway under /v1/ always
answers in OpenAI's error shape, so an agent's OpenAI SDK raises the matching exception, even for
a body refused as too large or too deep before the gateway saw it.
"""

from __future__ import annotations

from fastapi import Response

from agent_fabric.inbound.api.problems import problem
from agent_fabric.llm_gateway.openai_errors import GatewayError

GATEWAY_PREFIX = "/v1/"  # the LLM gateway (llm_gateway/router.py)


def refusal(status: int, code: str, title: str, detail: str, path: str) -> Response:
    if path.startswith(GATEWAY_PREFIX):
        return GatewayError(status, detail, type_="invalid_request_error", code=code).response()
    return problem(status, code, title, detail, path)
