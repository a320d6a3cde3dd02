"""Pure pieces behind issue 11: the JSON depth scan and the NATS server list."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent_fabric.errors import InvalidEvent
from agent_fabric.events.json_limits import check_json_depth, json_depth
from agent_fabric.settings import NatsSettings, nats_servers


@pytest.mark.parametrize(
    "raw, depth",
    [
        (b"1", 0),
        (b"[]", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[[[[ not nesting ]"}', 1),
        (b'["escaped \\" [[[ quote", [2]]', 2),
        (b"[" * 5000, 5000),  # not JSON at all: still measured, never parsed
    ],
)
def test_json_depth_counts_brackets_outside_strings(raw: bytes, depth: int) -> None:
    assert json_depth(raw) == depth


def test_depth_check_refuses_past_the_limit_only() -> None:
    check_json_depth(b"[" * 8 + b"]" * 8, 8)
    with pytest.raises(InvalidEvent) as refused:
        check_json_depth(b"[" * 9 + b"]" * 9, 8)
    assert refused.value.code == "json_too_deep" and "8 levels" in refused.value.message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "' + b"[" * 50 + b'", "b": [[1]]}',  # many brackets, all in a string: shallow
        b'{"a": "' + b"{" * 50 + b'", "b": ' + b"[" * 9 + b"]" * 9 + b"}",  # and deep past the strings
        b'["\\", ' + b"[" * 7 + b"]" * 7 + b"]",
        b"[" * 8,
        b"[" * 9,
        b"]" * 20 + b"[" * 3,
    ],
)
def test_depth_check_with_a_limit_agrees_with_the_full_scan(raw: bytes) -> None:
    for limit in range(12):
        assert (json_depth(raw, stop_after=limit) > limit) == (json_depth(raw) > limit)


def test_nats_url_list_is_split_for_the_client() -> None:
    assert nats_servers("nats://a:4222, nats://b:4222 ,nats://c:4222") == [
        "nats://a:4222",
        "nats://b:4222",
        "nats://c:4222",
    ]
    assert NatsSettings(url="nats://a:4222").servers == ["nats://a:4222"]
    with pytest.raises(ValidationError):
        NatsSettings(url=" , ")


def test_unreachable_database_is_told_apart_from_a_wrong_write() -> None:
    from sqlalchemy import exc as sa_exc

    from agent_fabric.storage.outage import is_unreachable

    refused = sa_exc.OperationalError("connect", {}, ConnectionRefusedError(111, "refused"))
    assert is_unreachable(refused)
    assert is_unreachable(sa_exc.InterfaceError("select", {}, Exception("connection is closed")))
    wrapped = RuntimeError("flush failed")
    wrapped.__cause__ = ConnectionResetError()
    assert is_unreachable(wrapped)
    assert not is_unreachable(sa_exc.StatementError("bad state", "insert", {}, TypeError("not JSON")))
    assert not is_unreachable(sa_exc.IntegrityError("insert", {}, Exception("duplicate key")))
