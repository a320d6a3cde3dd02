"""Audit entries, how they are redacted, and how they become rows.

Secrets never reach the table: values under secret-looking keys are replaced, bearer tokens, JWTs
and URL passwords inside any string are masked (telemetry.logging.redact), and oversized payloads
are cut to a preview.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.storage.pg_raw import driver, json_text
from agent_fabric.storage.tables import audit_log
from agent_fabric.telemetry.logging import redact

REDACTED = "[redacted]"
MAX_PAYLOAD_BYTES = 16_384
# A key naming a secret as a whole word: "password", "api_key", "access_token", "X-Api-Key";
# not "tokens" or "max_tokens", which are counts.
_SECRET_KEY = re.compile(
    r"(?i)(^|[_\-.])(pass(word|wd)?|secrets?|token|api[_\-]?key|authorization|credentials?|private[_\-]?key"
    r"|cookie|session[_\-]?key)($|[_\-.])"
)


def utcnow() -> datetime:
    return datetime.now(UTC)


# Entry ids: a random per-process prefix and a counter. Unique like a uuid4, without a system call
# for randomness on every policy decision.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()


def new_entry_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    action: str
    actor: str
    tenant_id: str | None
    mode: str
    request: Any = None
    response: Any = None
    cost_usd: float | None = None
    session_id: str | None = None
    at: datetime = field(default_factory=utcnow)
    entry_id: str = field(default_factory=new_entry_id)

    def row(self) -> dict[str, Any]:
        return {**self.row_without_payloads(), "request": scrub(self.request), "response": scrub(self.response)}

    def row_without_payloads(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "at": self.at,
            "actor": self.actor[:128],
            "tenant_id": self.tenant_id,
            "session_id": self.session_id,
            "action": self.action[:64],
            "mode": self.mode,
            "cost_usd": self.cost_usd,
        }


@dataclass(frozen=True, slots=True)
class Caller:
    """Who acts, for which tenant (POD), in which mode: what every audit entry of a request names."""

    actor: str
    tenant_id: str
    mode: str

    def entry(
        self,
        action: str,
        *,
        request: Any = None,
        response: Any = None,
        session_id: str | None = None,
        cost_usd: float | None = None,
    ) -> AuditEntry:
        return AuditEntry(
            action,
            self.actor,
            self.tenant_id,
            self.mode,
            request=request,
            response=response,
            session_id=session_id,
            cost_usd=cost_usd,
        )


def scrub(value: Any) -> Any:
    """A JSON-safe, redacted copy, cut to a preview past MAX_PAYLOAD_BYTES."""
    encoded = scrub_json(value)
    return None if encoded is None else orjson.loads(encoded)


def scrub_json(value: Any) -> bytes | None:
    """`scrub(value)` as JSON, for a JSON column written from text: the common entry is encoded
    once here, where decoding it and encoding it again cost as much as the test for secrets."""
    if value is None:
        return None
    if hasattr(value, "as_dict"):  # a decision handed over as is: converted here, off the hot path
        value = value.as_dict()
    encoded = orjson.dumps(value, default=str)
    if len(encoded) <= MAX_PAYLOAD_BYTES and not _may_hold_secret(encoded):
        # Nothing in it could be masked (the common case: a policy decision on every task), so
        # the walk over every key and string is skipped; the result is the same.
        return encoded
    encoded = orjson.dumps(_redact(orjson.loads(encoded)))
    if len(encoded) > MAX_PAYLOAD_BYTES:
        return orjson.dumps(
            {"truncated": True, "bytes": len(encoded), "preview": encoded[:2048].decode(errors="replace")}
        )
    return encoded


# Cheap test before the masking patterns: every one of them needs one of these.
_MAYBE_SECRET = re.compile(r"(?i)bearer|eyJ|@")


# The same test on the encoded JSON, a superset of both the masked keys (quoted or after a
# separator) and the strings _redact looks into: no match, nothing to mask.
_MAYBE_SECRET_JSON = re.compile(
    rb"(?i)bearer|eyJ|@|[\"_\-.](pass(word|wd)?|secrets?|token|api[_\-]?key|authorization|credentials?"
    rb"|private[_\-]?key|cookie|session[_\-]?key)[\"_\-.]"
)


# Every match of _MAYBE_SECRET_JSON holds one of these (its alternatives, lower-cased; "key" for
# the api/private/session keys): a pattern without case folding or a leading class, over the
# lower-cased text, runs in a third of the time, and the full pattern only where it finds one.
_SECRET_STEMS = re.compile(rb"@|bearer|eyj|pass|secret|token|key|authorization|credential|cookie")

# Payloads found clean, by their JSON: a policy decision's entry repeats (its request is the action,
# the door and the caller's context; its response the decision), so most are seen before, and a
# dict lookup replaces the test (14 us per payload with the full pattern alone). Only short ones
# are kept, and the whole set is dropped when full.
_CLEAN: dict[bytes, None] = {}
_CLEAN_MAX = 4096
_CLEAN_MAX_BYTES = 1024


def _may_hold_secret(encoded: bytes) -> bool:
    if encoded in _CLEAN:
        return False
    if _SECRET_STEMS.search(encoded.lower()) is not None and _MAYBE_SECRET_JSON.search(encoded) is not None:
        return True
    if len(encoded) <= _CLEAN_MAX_BYTES:
        if len(_CLEAN) >= _CLEAN_MAX:
            _CLEAN.clear()
        _CLEAN[encoded] = None
    return False


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str) and _MAYBE_SECRET.search(value):
        return redact(value)
    return value


def row_from_spool(data: dict[str, Any]) -> dict[str, Any]:
    """A spooled row (already redacted) back into column values."""
    return {**data, "at": datetime.fromisoformat(data["at"])}


# Postgres: one fixed statement over arrays, whatever the batch size, sent to asyncpg as is
# (storage/pg_raw.py), prepared once per connection.
_PG_INSERT = """
INSERT INTO audit_log (entry_id, at, actor, tenant_id, session_id, action, mode, request, response, cost_usd)
SELECT e, a, ac, t, s, act, m, rq::jsonb, rs::jsonb, c
FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::float8[])
     AS v(e, a, ac, t, s, act, m, rq, rs, c)
ON CONFLICT (entry_id) DO NOTHING
"""


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


async def insert_rows(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows; an entry id already present (a replayed spool) is skipped, not doubled."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        await _pg_insert(
            conn,
            rows,
            [json_text(r["request"]) for r in rows],
            [json_text(r["response"]) for r in rows],
        )
        return
    stmt = sqlite_insert(audit_log).on_conflict_do_nothing(index_elements=["entry_id"])
    await conn.execute(stmt, list(rows))


async def insert_entries(conn: AsyncConnection, entries: Sequence[AuditEntry]) -> None:
    """`insert_rows` of these entries; on Postgres their payloads go in as the JSON `scrub_json`
    made (one encoding per payload instead of encode, decode, encode)."""
    if not entries:
        return
    if conn.dialect.name != "postgresql":
        await insert_rows(conn, [e.row() for e in entries])
        return
    rows = [e.row_without_payloads() for e in entries]
    requests = [_text(scrub_json(e.request)) for e in entries]
    responses = [_text(scrub_json(e.response)) for e in entries]
    await _pg_insert(conn, rows, requests, responses)


async def _pg_insert(
    conn: AsyncConnection, rows: Sequence[dict[str, Any]], requests: list[str | None], responses: list[str | None]
) -> None:
    await (await driver(conn)).execute(
        _PG_INSERT,
        [r["entry_id"] for r in rows],
        [r["at"] for r in rows],
        [r["actor"] for r in rows],
        [r["tenant_id"] for r in rows],
        [r["session_id"] for r in rows],
        [r["action"] for r in rows],
        [r["mode"] for r in rows],
        requests,
        responses,
        [r["cost_usd"] for r in rows],
    )


async def append(conn: AsyncConnection, *entries: AuditEntry) -> None:
    """Audit inside the caller's transaction: the change and its entry commit together."""
    await insert_entries(conn, entries)
