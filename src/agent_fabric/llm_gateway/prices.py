"""The price table (AGENT_FABRIC_LLM_PRICES): USD per 1,000 prompt and completion tokens, per model."""

from __future__ import annotations

from agent_fabric.settings import LlmPrice


class PriceTable:
    def __init__(self, prices: dict[str, LlmPrice]) -> None:
        self._prices = prices

    def cost(self, model: str, prompt_tokens: float, completion_tokens: float) -> float:
        """USD for the tokens; a model missing from the table costs 0 (tokens still count)."""
        price = self._prices.get(model)
        if price is None:
            return 0.0
        return (prompt_tokens * price.input_per_1k + completion_tokens * price.output_per_1k) / 1000.0
