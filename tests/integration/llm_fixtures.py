"""Fabric replicas with the LLM gateway in front of the OpenAI stand-in, served over real HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent_fabric.settings import LlmPrice, LlmSettings, LlmUpstream
from tests.conftest import RunningApp, make_settings, running_app
from tests.support.asgi_server import serving
from tests.support.openai_standin import UPSTREAM_KEY

STANDIN_MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "nousage-*", "error-*"]
PRICES = {"gpt-4o-mini": LlmPrice(input_per_1k=0.15, output_per_1k=0.6)}


def llm_settings(upstream_url: str, public_url: str, **over: Any) -> LlmSettings:
    upstream = LlmUpstream(name="standin", base_url=upstream_url, api_key=UPSTREAM_KEY, models=STANDIN_MODELS)
    # A long key cache: a revocation seen by a test came through the broadcast, not the cache's expiry.
    over.setdefault("key_cache_seconds", 60.0)
    return LlmSettings(upstreams=[upstream], prices=PRICES, public_base_url=public_url, **over)


@contextlib.asynccontextmanager
async def gateway_replica(
    state_dir: Path,
    nats_url: str,
    upstream_url: str,
    public_url: str,
    port: int,
    db: str | None = None,
    redis: str | None = None,
    llm: dict[str, Any] | None = None,
    **over: Any,
) -> AsyncIterator[RunningApp]:
    """One fabric replica with the gateway, listening on `port`; agents are told `public_url`;
    `llm`: gateway settings beside the stand-in upstream."""
    gateway = llm_settings(upstream_url, public_url, **(llm or {}))
    settings = make_settings(state_dir, nats_url, database_url=db, redis_url=redis, llm=gateway, **over)
    async with running_app(settings) as app, serving(app.app, port):
        yield app


async def set_tenant(app: RunningApp, pod: str, mode: str, **budget: Any) -> None:
    body: dict[str, Any] = {"mode": mode}
    if budget:
        body["budget"] = {"period": "daily", **budget}
    response = await app.client.put(f"/api/v1/config/{pod}", headers=app.auth(), json=body)
    assert response.status_code == 200, response.text


async def instance_key(app: RunningApp, pod: str, agent: str = "agent-zero") -> str:
    response = await app.client.post(
        f"/api/v1/llm/keys?tenant_id={pod}", headers=app.auth(), json={"instance_id": "a0-1", "agent": agent}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["api_key"])
