"""Budget arithmetic: period boundaries, rollover and carryover, fitting, alerts, projection. Pure."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent_fabric.admission.budget_math import (
    Amounts,
    BudgetState,
    Limits,
    Period,
    due_alerts,
    exceeded_dimension,
    period_end,
    period_start,
    projection,
    roll,
    thresholds,
    usage_ratio,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def state(**over: object) -> BudgetState:
    base = BudgetState(
        limits=Limits(cost_usd=10.0),
        period="daily",
        carryover=False,
        alert_threshold_percent=80.0,
        period_start=at("2026-03-10T00:00:00"),
    )
    return replace(base, **over)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "now, period, start, end",
    [
        ("2026-03-10T13:45:00", "daily", "2026-03-10T00:00:00", "2026-03-11T00:00:00"),
        ("2026-03-10T00:00:00", "daily", "2026-03-10T00:00:00", "2026-03-11T00:00:00"),
        ("2026-03-10T23:59:59.999999", "daily", "2026-03-10T00:00:00", "2026-03-11T00:00:00"),
        ("2026-03-11T10:00:00", "weekly", "2026-03-09T00:00:00", "2026-03-16T00:00:00"),  # Wednesday
        ("2026-03-09T00:00:00", "weekly", "2026-03-09T00:00:00", "2026-03-16T00:00:00"),  # Monday
        ("2026-03-15T23:59:00", "weekly", "2026-03-09T00:00:00", "2026-03-16T00:00:00"),  # Sunday
        ("2026-02-28T12:00:00", "monthly", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
        ("2028-02-29T12:00:00", "monthly", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),  # leap day
        ("2026-12-31T23:00:00", "monthly", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),  # year end
        ("2026-12-31T23:00:00", "weekly", "2026-12-28T00:00:00", "2027-01-04T00:00:00"),
    ],
)
def test_period_boundaries_in_utc(now: str, period: Period, start: str, end: str) -> None:
    begins = period_start(at(now), period)
    assert begins == at(start) and period_end(begins, period) == at(end)


def test_periods_are_utc_whatever_the_callers_timezone() -> None:
    tokyo = timezone(timedelta(hours=9))
    local = datetime(2026, 3, 11, 5, 0, tzinfo=tokyo)  # 2026-03-10T20:00Z
    assert period_start(local, "daily") == at("2026-03-10T00:00:00")


def test_roll_keeps_the_period_until_it_ends() -> None:
    s = state(used=Amounts(cost_usd=4.0))
    same, closed = roll(s, at("2026-03-10T23:59:59"))
    assert same is s and closed is None


def test_roll_resets_usage_and_alerts_keeps_reservations() -> None:
    s = state(used=Amounts(cost_usd=9.0), reserved=Amounts(cost_usd=1.0), alerts_sent=(50.0, 75.0))
    rolled, closed = roll(s, at("2026-03-11T00:00:00"))
    assert closed is not None and closed.used.cost_usd == 9.0 and closed.end == at("2026-03-11T00:00:00")
    assert rolled.used == Amounts() and rolled.alerts_sent == () and rolled.reserved.cost_usd == 1.0
    assert rolled.period_start == at("2026-03-11T00:00:00") and rolled.carried == Amounts()


def test_roll_after_idle_periods_lands_in_the_current_one() -> None:
    rolled, _ = roll(state(), at("2026-03-20T08:00:00"))
    assert rolled.period_start == at("2026-03-20T00:00:00")


def test_carryover_adds_what_was_left_capped_at_one_period() -> None:
    s = state(carryover=True, used=Amounts(cost_usd=4.0))
    rolled, _ = roll(s, at("2026-03-11T01:00:00"))
    assert rolled.carried.cost_usd == 6.0 and rolled.effective_limit("cost_usd") == 16.0
    # Unused again the next day: 16 left, but at most one period's limit carries.
    again, _ = roll(rolled, at("2026-03-12T01:00:00"))
    assert again.carried.cost_usd == 10.0
    # Overspent: nothing carries, and debt does not carry either.
    over, _ = roll(state(carryover=True, used=Amounts(cost_usd=12.0)), at("2026-03-11T01:00:00"))
    assert over.carried.cost_usd == 0.0


def test_unlimited_dimensions_never_refuse() -> None:
    s = state(limits=Limits(tokens=1000.0), used=Amounts(cost_usd=1e9, tokens=10))
    assert exceeded_dimension(s, Amounts(cost_usd=1e9, tokens=990)) is None
    assert exceeded_dimension(s, Amounts(tokens=991)) == "tokens"


def test_reservations_count_towards_the_limit() -> None:
    s = state(used=Amounts(cost_usd=6.0), reserved=Amounts(cost_usd=3.0))
    assert exceeded_dimension(s, Amounts(cost_usd=1.0)) is None  # 6 + 3 + 1 = 10, exactly the limit
    assert exceeded_dimension(s, Amounts(cost_usd=1.01)) == "cost_usd"


def test_zero_estimate_fits_until_used_up() -> None:
    assert exceeded_dimension(state(used=Amounts(cost_usd=9.99)), Amounts()) is None
    assert exceeded_dimension(state(used=Amounts(cost_usd=10.0)), Amounts()) == "cost_usd"
    assert exceeded_dimension(state(limits=Limits(cost_usd=0.0)), Amounts()) == "cost_usd"


def test_carried_budget_is_spendable() -> None:
    s = state(used=Amounts(cost_usd=12.0), carried=Amounts(cost_usd=5.0))
    assert exceeded_dimension(s, Amounts(cost_usd=3.0)) is None
    assert usage_ratio(s) == pytest.approx(12 / 15)


def test_ratio_is_the_largest_across_dimensions() -> None:
    s = state(limits=Limits(tokens=100, cost_usd=10.0), used=Amounts(tokens=90, cost_usd=1.0))
    assert usage_ratio(s) == pytest.approx(0.9)
    assert usage_ratio(state(limits=Limits())) == 0.0


def test_thresholds_include_the_configured_one_and_the_limit() -> None:
    assert thresholds(state(alert_threshold_percent=80.0)) == (50.0, 75.0, 80.0, 90.0, 100.0)
    assert thresholds(state(alert_threshold_percent=75.0)) == (50.0, 75.0, 90.0, 100.0)


def test_alerts_fire_once_each_per_period() -> None:
    s = state(used=Amounts(cost_usd=7.6))
    assert due_alerts(s) == (50.0, 75.0)
    s = replace(s, alerts_sent=(50.0, 75.0), used=Amounts(cost_usd=7.9))
    assert due_alerts(s) == ()
    s = replace(s, used=Amounts(cost_usd=10.5))
    assert due_alerts(s) == (80.0, 90.0, 100.0)
    rolled, _ = roll(replace(s, alerts_sent=(50.0, 75.0, 80.0, 90.0, 100.0)), at("2026-03-11T00:00:00"))
    assert due_alerts(replace(rolled, used=Amounts(cost_usd=5.0))) == (50.0,)
    assert due_alerts(state(limits=Limits(), used=Amounts(cost_usd=100))) == ()


def test_projection_is_linear_to_the_period_end() -> None:
    s = state(used=Amounts(cost_usd=2.0, tokens=100))
    noon = projection(s, at("2026-03-10T12:00:00"))
    assert noon.cost_usd == pytest.approx(4.0) and noon.tokens == pytest.approx(200)
    # The first minute extrapolates from a minute, not from a few seconds.
    early = projection(state(used=Amounts(cost_usd=1.0)), at("2026-03-10T00:00:01"))
    assert early.cost_usd == pytest.approx(24 * 60)
    assert projection(s, at("2026-03-12T00:00:00")).cost_usd == pytest.approx(2.0)
