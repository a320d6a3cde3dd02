"""A budget's configuration as users write it (API, tenant configuration). Validated, then stored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agent_fabric.admission.budget_math import Limits, Period


class BudgetConfig(BaseModel):
    """Limits per period; a missing limit is unlimited. Seed names: max_tokens_per_day & co. become
    max_tokens with period=daily."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int | None = Field(None, ge=0, description="Tokens per period.")
    max_compute_seconds: float | None = Field(None, ge=0, description="Compute seconds per period.")
    max_cost_usd: float | None = Field(None, ge=0, description="Cost in USD per period.")
    period: Period = Field("monthly", description="daily, weekly (from Monday) or monthly, in UTC.")
    carryover: bool = Field(False, description="Add what a period left unused (at most one limit) to the next.")
    alert_threshold_percent: float = Field(
        80.0, gt=0, le=100, description="An alert threshold besides the fixed 50, 75, 90 and 100 %."
    )

    @property
    def limits(self) -> Limits:
        return Limits(
            None if self.max_tokens is None else float(self.max_tokens),
            self.max_compute_seconds,
            self.max_cost_usd,
        )
