"""/v1/*: the OpenAI-compatible endpoints agents use as their model API.

Authentication is a gateway key (`Authorization: Bearer afk-...`, keys.py), never a fabric JWT:
the key names what the call spends for. Each key is rate-limited like every credential of the API
(HTTP_RATE_LIMIT_PER_SECOND / _BURST, per replica). Every refusal is an OpenAI-shaped error, 401
and 429 included.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from agent_fabric.llm_gateway import openai_errors as errs
from agent_fabric.llm_gateway.gateway import CHAT, EMBEDDINGS, LlmGateway
from agent_fabric.llm_gateway.keys import KeyGrant, key_hash

router = APIRouter(prefix="/v1", tags=["llm-gateway"])


def _gateway(request: Request) -> LlmGateway:
    gateway: LlmGateway = request.app.state.fabric.llm
    return gateway


async def _grant(request: Request) -> KeyGrant:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise errs.unauthenticated("send Authorization: Bearer <gateway key> (OPENAI_API_KEY of the task)")
    fabric = request.app.state.fabric
    grant: KeyGrant | None = await fabric.llm_keys.authenticate(key.strip())
    if grant is None:
        raise errs.unauthenticated("the gateway key is unknown, expired or revoked")
    retry_after = fabric.rate_limiter.acquire(f"llm-key:{key_hash(key.strip())[:24]}")
    if retry_after is not None:
        raise errs.rate_limited(retry_after)
    return grant


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise errs.invalid_request(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise errs.invalid_request("the body must be a JSON object")
    return body


async def _call(request: Request, endpoint: str) -> Response:
    try:
        grant = await _grant(request)
        return await _gateway(request).call(grant, endpoint, await _json_body(request))
    except errs.GatewayError as exc:
        return exc.response()


@router.post("/chat/completions", summary="Chat completion (streamed with stream=true), metered and budgeted")
async def chat_completions(request: Request) -> Response:
    return await _call(request, CHAT)


@router.post("/embeddings", summary="Embeddings, metered and budgeted")
async def embeddings(request: Request) -> Response:
    return await _call(request, EMBEDDINGS)


@router.get("/models", summary="The models the gateway serves")
async def models(request: Request) -> Response:
    try:
        await _grant(request)
    except errs.GatewayError as exc:
        return exc.response()
    return JSONResponse(_gateway(request).models())
