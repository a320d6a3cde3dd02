"""Pure pieces of fleet management: instance URLs, agent families, routing of PODs to sets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent_fabric.agent_zero.fleet import Fleet
from agent_fabric.agent_zero.fleet_agents import descendants
from agent_fabric.agent_zero.fleet_rows import IDLE, SPECIALIST, AgentRecord
from agent_fabric.agent_zero.registry import checked_url
from agent_fabric.errors import InvalidRequest
from agent_fabric.settings import AgentZeroSettings, Mode


def test_instance_urls_are_checked_and_normalised() -> None:
    assert checked_url(" https://a0.example.com:50080/ ") == "https://a0.example.com:50080"
    assert checked_url("http://10.0.0.5/agent-zero/") == "http://10.0.0.5/agent-zero"
    for bad in (
        "ftp://a0",
        "a0.example.com",
        "http://",
        "http://u:p@a0",
        "http://a0/?x=1",
        "http://a0/#f",
        "http://[::1",
    ):
        with pytest.raises(InvalidRequest) as refused:
            checked_url(bad)
        assert refused.value.code == "invalid_url", bad


def agent(agent_id: str, parent: str | None) -> AgentRecord:
    now = datetime.now(UTC)
    return AgentRecord(agent_id, "pod", SPECIALIST, "p", parent, None, None, IDLE, "SANDBOX", "t", now, now, None, None)


def testdescendants_are_the_whole_subtree_parents_first() -> None:
    root, a, b, a1, a1x, other = (
        agent("root", None),
        agent("a", "root"),
        agent("b", "root"),
        agent("a1", "a"),
        agent("a1x", "a1"),
        agent("other", None),
    )
    live = [root, a, b, a1, a1x, other]
    assert [x.id for x in descendants(a, live)] == ["a", "a1", "a1x"]
    assert [x.id for x in descendants(root, live)] == ["root", "a", "b", "a1", "a1x"]
    assert [x.id for x in descendants(b, live)] == ["b"]


async def test_another_pods_sandbox_instance_does_not_move_a_pod_off_the_live_set() -> None:
    modes: dict[str | None, Mode] = {"pod-a": "SANDBOX", "pod-b": "SANDBOX"}
    fleet = Fleet(AgentZeroSettings(url="http://shared:1", api_key="k"), lambda t: modes.get(t, "LIVE"))
    own = fleet.make_instance("http://own:1", "k2", "SANDBOX", tenant_id="pod-a", instance_id="i1")
    fleet.instances.append(own)
    try:
        assert fleet.set_for("pod-a") == "SANDBOX" and fleet.candidates("pod-a") == [own]
        assert fleet.set_for("pod-b") == "LIVE" and [i.url for i in fleet.candidates("pod-b")] == ["http://shared:1"]
        assert fleet.registered() == {"i1": own}
    finally:
        await fleet.aclose()
