"""Pure pieces of Agent Zero sessions: finding a message in a chat's log, subjects, close codes."""

from __future__ import annotations

from typing import Any

from agent_fabric import names
from agent_fabric.agent_zero.log_follower import find_user_item
from agent_fabric.errors import Forbidden, NotFound, Unauthenticated
from agent_fabric.security.ws_auth import close_code, close_reason
from agent_fabric.storage.session_store import tenant_lock_key


def chat(*texts: str) -> dict[str, Any]:
    """A session's log: the greeting, then per message its user item, an agent item, the answer."""
    items: list[dict[str, Any]] = [{"no": 0, "type": "response", "content": "Hello!"}]
    for text in texts:
        for type_, content in (("user", text), ("agent", "..."), ("response", f"Done: {text}")):
            items.append({"no": len(items), "type": type_, "content": content})
    return {"items": items}


def test_the_same_words_again_are_not_the_earlier_message() -> None:
    log = chat("yes", "status?")  # the second "yes" is sent but not logged yet
    assert find_user_item(log, "yes") == 1  # without a floor: the earlier one, wrongly
    assert find_user_item(log, "yes", floor=6) is None  # past the previous message's items: not yet there
    again = chat("yes", "status?", "yes")
    assert find_user_item(again, "yes", floor=6) == 7


def test_session_subjects_and_lock_keys() -> None:
    assert names.agent_session_subject("6f1c.x") == "agent.sessions.6f1c%2Ex"
    assert tenant_lock_key("pod-1") == tenant_lock_key("pod-1") != tenant_lock_key("pod-2")
    assert -(2**63) <= tenant_lock_key("pod-1") < 2**63


def test_websocket_refusals_close_with_4000_plus_the_status() -> None:
    assert [close_code(e("x")) for e in (Unauthenticated, Forbidden, NotFound)] == [4401, 4403, 4404]
    assert len(close_reason("é" * 200).encode()) <= 123
