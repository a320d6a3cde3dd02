"""Budget arithmetic: periods, rollover with carryover, what fits, alerts, projections. No I/O.

Three dimensions: tokens, compute seconds, cost in USD. A null limit is unlimited. Periods are
calendar periods in UTC: a day from midnight, a week from Monday, a month from the 1st.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Period = Literal["daily", "weekly", "monthly"]
PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly")
DIMENSIONS = ("tokens", "compute_seconds", "cost_usd")
SOFT_THRESHOLDS = (50.0, 75.0, 90.0)
HARD_THRESHOLD = 100.0
# Projections extrapolate from at least this much of the period, so a first minute of usage
# does not project absurd numbers.
MIN_PROJECTION_BASIS = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Amounts:
    tokens: float = 0.0
    compute_seconds: float = 0.0
    cost_usd: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Amounts:
        data = data or {}
        return cls(*(float(data.get(d) or 0.0) for d in DIMENSIONS))

    def as_dict(self) -> dict[str, float]:
        return {"tokens": self.tokens, "compute_seconds": self.compute_seconds, "cost_usd": self.cost_usd}

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(*(a + b for a, b in zip(self._values(), other._values(), strict=True)))

    def __sub__(self, other: Amounts) -> Amounts:
        return Amounts(*(max(0.0, a - b) for a, b in zip(self._values(), other._values(), strict=True)))

    def nonzero(self) -> bool:
        """Anything used (not all zero): `self != Amounts()` without making one to compare."""
        return bool(self.tokens or self.compute_seconds or self.cost_usd)

    def _values(self) -> tuple[float, float, float]:
        return (self.tokens, self.compute_seconds, self.cost_usd)

    def get(self, dimension: str) -> float:
        value: float = getattr(self, dimension)
        return value


@dataclass(frozen=True, slots=True)
class Limits:
    tokens: float | None = None
    compute_seconds: float | None = None
    cost_usd: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Limits:
        data = data or {}
        return cls(*(None if data.get(d) is None else float(data[d]) for d in DIMENSIONS))

    def as_dict(self) -> dict[str, float | None]:
        return {"tokens": self.tokens, "compute_seconds": self.compute_seconds, "cost_usd": self.cost_usd}

    @property
    def any(self) -> bool:
        return any(self.get(d) is not None for d in DIMENSIONS)

    def get(self, dimension: str) -> float | None:
        value: float | None = getattr(self, dimension)
        return value


@dataclass(frozen=True, slots=True)
class BudgetState:
    limits: Limits
    period: Period
    carryover: bool
    alert_threshold_percent: float
    period_start: datetime
    used: Amounts = field(default_factory=Amounts)
    reserved: Amounts = field(default_factory=Amounts)
    carried: Amounts = field(default_factory=Amounts)
    alerts_sent: tuple[float, ...] = ()

    @property
    def period_end(self) -> datetime:
        return period_end(self.period_start, self.period)

    def effective_limit(self, dimension: str) -> float | None:
        limit = self.limits.get(dimension)
        return None if limit is None else limit + self.carried.get(dimension)


@dataclass(frozen=True, slots=True)
class ClosedPeriod:
    start: datetime
    end: datetime
    limits: Limits
    used: Amounts
    carried: Amounts


def period_start(now: datetime, period: Period) -> datetime:
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day
    if period == "weekly":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_end(start: datetime, period: Period) -> datetime:
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def roll(state: BudgetState, now: datetime) -> tuple[BudgetState, ClosedPeriod | None]:
    """Move the budget into the period holding `now`. Usage resets, alerts re-arm, reservations of
    tasks still running stay. With carryover, what the closed period left unused is added to the
    new period's limit, at most one period's limit (so budgets do not pile up)."""
    if now < state.period_end:
        return state, None
    closed = ClosedPeriod(state.period_start, state.period_end, state.limits, state.used, state.carried)
    carried = Amounts()
    if state.carryover:
        carried = Amounts(*(_unused(state, d) for d in DIMENSIONS))
    rolled = replace(
        state, period_start=period_start(now, state.period), used=Amounts(), carried=carried, alerts_sent=()
    )
    return rolled, closed


def _unused(state: BudgetState, dimension: str) -> float:
    limit = state.limits.get(dimension)
    effective = state.effective_limit(dimension)
    if limit is None or effective is None:
        return 0.0
    return min(limit, max(0.0, effective - state.used.get(dimension)))


def exceeded_dimension(state: BudgetState, estimate: Amounts) -> str | None:
    """The first dimension the estimate would take past its limit, or None when it fits.
    A task with a zero estimate fits while the budget is not yet used up."""
    for dimension in DIMENSIONS:
        limit = state.effective_limit(dimension)
        if limit is None:
            continue
        committed = state.used.get(dimension) + state.reserved.get(dimension)
        wanted = estimate.get(dimension)
        if committed + wanted > limit or (wanted == 0 and committed >= limit):
            return dimension
    return None


def usage_ratio(state: BudgetState) -> float:
    """Used over limit, the largest across limited dimensions (0 when nothing is limited)."""
    ratios = [0.0]
    for dimension in DIMENSIONS:
        limit = state.effective_limit(dimension)
        if limit is None:
            continue
        used = state.used.get(dimension)
        ratios.append(used / limit if limit > 0 else (1.0 if used >= 0 else 0.0))
    return max(ratios)


def thresholds(state: BudgetState) -> tuple[float, ...]:
    return tuple(sorted({*SOFT_THRESHOLDS, float(state.alert_threshold_percent), HARD_THRESHOLD}))


def due_alerts(state: BudgetState) -> tuple[float, ...]:
    """Thresholds the usage has reached that have not been announced in this period."""
    if not state.limits.any:
        return ()
    percent = usage_ratio(state) * 100
    return tuple(t for t in thresholds(state) if percent >= t and t not in state.alerts_sent)


def projection(state: BudgetState, now: datetime) -> Amounts:
    """Usage at the end of the period if it goes on at the rate seen so far (linear)."""
    end = state.period_end
    length = end - state.period_start
    elapsed = max(min(now, end) - state.period_start, MIN_PROJECTION_BASIS)
    factor = length / elapsed
    return Amounts(*(state.used.get(d) * factor for d in DIMENSIONS))
