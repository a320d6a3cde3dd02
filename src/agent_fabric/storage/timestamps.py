"""Timestamps read back from the database are UTC-aware on every backend.

Postgres returns timezone-aware values for `timestamptz`; SQLite stores text and returns naive
ones, which are UTC because the fabric only ever writes UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def aware_or_none(value: datetime | None) -> datetime | None:
    return aware(value) if value is not None else None
