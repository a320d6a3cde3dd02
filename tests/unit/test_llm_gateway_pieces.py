"""The LLM gateway's pure pieces: the token estimate, prices, error shape, prompt redaction, the
bounded token relay."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_fabric.admission.policy_model import Action
from agent_fabric.llm_gateway import estimator
from agent_fabric.llm_gateway.openai_errors import budget_exceeded, unauthenticated
from agent_fabric.llm_gateway.prices import PriceTable
from agent_fabric.llm_gateway.token_relay import TokenRelay
from agent_fabric.llm_gateway.transcript import redact_text, transcript
from agent_fabric.settings import LlmPrice, LlmSettings


def test_estimate_counts_four_characters_a_token_plus_message_framing() -> None:
    body = {"messages": [{"role": "system", "content": "x" * 8}, {"role": "user", "content": "hello"}]}
    assert estimator.chat_prompt_tokens(body) == 3 + (4 + 2) + (4 + 2)
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image_url"}]}]}
    assert estimator.chat_prompt_tokens(parts) == 3 + 4 + 1
    assert estimator.embedding_input_tokens({"input": ["abcd", "abcdefgh", [1, 2, 3]]}) == 1 + 2 + 3
    assert estimator.max_completion_tokens({"max_tokens": 50}, 1024) == 50
    assert estimator.max_completion_tokens({"max_completion_tokens": 7, "max_tokens": 50}, 1024) == 7
    assert estimator.max_completion_tokens({"max_tokens": True}, 1024) == 1024


def test_prices_per_thousand_tokens_and_unlisted_models_cost_nothing() -> None:
    table = PriceTable({"m": LlmPrice(input_per_1k=1.0, output_per_1k=3.0)})
    assert table.cost("m", 500, 1000) == pytest.approx(3.5)
    assert table.cost("other", 500, 1000) == 0.0


def test_settings_read_upstreams_and_prices_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AGENT_FABRIC_LLM_UPSTREAMS",
        '[{"name": "openai", "base_url": "https://api.openai.com/v1", "api_key": "sk-x", "models": ["gpt-*"]}]',
    )
    monkeypatch.setenv("AGENT_FABRIC_LLM_PRICES", '{"gpt-4o": {"input_per_1k": 0.0025, "output_per_1k": 0.01}}')
    cfg = LlmSettings()
    assert cfg.upstreams[0].models == ["gpt-*"] and "sk-x" not in repr(cfg)
    assert cfg.prices["gpt-4o"].output_per_1k == 0.01


def test_errors_have_openai_shape() -> None:
    error = budget_exceeded("budget 'tenant' is spent")
    assert error.status == 402
    assert error.body() == {
        "error": {
            "message": "budget 'tenant' is spent",
            "type": "insufficient_quota",
            "code": "budget_exceeded",
            "param": None,
        }
    }
    assert unauthenticated("no").response().headers["www-authenticate"] == "Bearer"


def test_model_is_a_policy_action_kind() -> None:
    assert Action.parse("model:gpt-4o").kind == "model"


def test_prompts_are_redacted_before_they_are_recorded() -> None:
    text = "my password: hunter2, api_key=abc123 and sk-proj-0123456789abcdef, Bearer eyJhbGciOi.x"
    clean = redact_text(text)
    for secret in ("hunter2", "abc123", "sk-proj-0123456789abcdef", "eyJhbGciOi"):
        assert secret not in clean
    recorded = transcript({"messages": [{"role": "user", "content": text}]}, "token=zzz ok")
    assert "hunter2" not in str(recorded) and recorded["completion"] == "token=[redacted] ok"
    assert len(redact_text("x" * 10_000)) < 4100


class _StuckBus:
    """A progress bus whose publish blocks until released: a watcher that cannot keep up."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.gate = asyncio.Event()

    async def publish(self, event: dict[str, Any]) -> None:
        await self.gate.wait()
        self.published.append(event)

    @contextlib.asynccontextmanager
    async def subscribe(self, tenant_id: str, job_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        yield asyncio.Queue()

    async def ping(self) -> None:
        """Always reachable."""

    async def aclose(self) -> None:
        """Nothing to close."""


def _chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


async def test_a_slow_watcher_never_blocks_the_stream_and_loses_only_the_oldest() -> None:
    bus = _StuckBus()
    relay = TokenRelay(bus.publish, {"tenant_id": "t", "job_id": "j"}, "call", "m", capacity=4)
    for i in range(10):
        relay.push_chunk(_chunk(f"w{i}"))  # returns at once although nothing can be published
    relay.push_chunk({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1"}]}}]})
    bus.gate.set()
    await asyncio.wait_for(relay.close(), 5)
    kinds = [(e["kind"], e["data"].get("text")) for e in bus.published]
    # Eleven events into a buffer of four: the newest four were kept, the seven oldest dropped.
    assert kinds == [("token", "w7"), ("token", "w8"), ("token", "w9"), ("tool_call", None)]
    assert relay.dropped == 7
