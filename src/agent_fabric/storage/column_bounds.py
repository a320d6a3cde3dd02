"""Upper bounds for integer parameters, so an out-of-range number is a 422 and never reaches the
database driver (asyncpg refuses Python ints past the column's type with an error, a 500)."""

from __future__ import annotations

MAX_BIGINT = 2**63 - 1
"""Largest Postgres BIGINT: ids and sequence numbers (audit cursors, session event seqs)."""

MAX_INT = 2**31 - 1
"""Largest Postgres INTEGER: attempt and event numbers of a task."""
