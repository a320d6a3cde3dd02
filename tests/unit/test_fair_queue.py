"""The fair run queue's arithmetic: class order, ageing, tenant and agent turns, caps."""

from __future__ import annotations

from agent_fabric.scheduling.queue import FairQueue
from agent_fabric.tasks import Priority


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _queue(ageing: float = 10.0, **caps: dict[str, int]) -> tuple[FairQueue[str], Clock]:
    clock = Clock()
    tenant_caps = caps.get("tenants", {})
    agent_caps = caps.get("agents", {})
    q: FairQueue[str] = FairQueue(
        ageing,
        tenant_cap=lambda t: tenant_caps.get(t, 0),
        agent_cap=lambda a: agent_caps.get(a, 0),
        clock=clock,
    )
    return q, clock


def _push(q: FairQueue[str], name: str, prio: Priority, tenant: str = "t", agent: str = "a") -> None:
    q.push(name, rank=prio.rank, tenant=tenant, agent=agent)


def _drain(q: FairQueue[str]) -> list[str]:
    order = []
    while (picked := q.pop()) is not None:
        order.append(picked.item)
        q.done(picked.tenant, picked.agent)
    return order


def test_critical_goes_before_a_backlog_of_low_pushed_earlier() -> None:
    q, _ = _queue()
    for i in range(10_000):
        _push(q, f"low{i}", Priority.LOW)
    _push(q, "crit", Priority.CRITICAL)
    _push(q, "high", Priority.HIGH)
    _push(q, "normal", Priority.NORMAL)
    first = [q.pop() for _ in range(4)]
    assert [p.item for p in first if p] == ["crit", "high", "normal", "low0"]
    assert len(q) == 9_999


def test_same_class_same_tenant_is_fifo() -> None:
    q, _ = _queue()
    for i in range(5):
        _push(q, f"n{i}", Priority.NORMAL)
    assert _drain(q) == [f"n{i}" for i in range(5)]


def test_ageing_moves_a_waiting_task_up_one_class_per_step() -> None:
    q, clock = _queue(ageing=10.0)
    _push(q, "low", Priority.LOW)
    assert q.effective_rank(Priority.LOW.rank, 0) == 3
    assert q.effective_rank(Priority.LOW.rank, 9.9) == 3
    assert q.effective_rank(Priority.LOW.rank, 10) == 2
    assert q.effective_rank(Priority.LOW.rank, 25) == 1
    assert q.effective_rank(Priority.LOW.rank, 1e6) == 0
    clock.now += 21  # the low task now competes as high
    _push(q, "high", Priority.HIGH)
    picked = q.pop()
    assert picked is not None and picked.item == "low" and picked.effective_rank == 1


def test_low_tasks_progress_under_a_sustained_flood_of_high() -> None:
    """One slot, a new high task every 0.1 s: the low task starts once it has aged 2 steps."""
    q, clock = _queue(ageing=10.0)
    _push(q, "low", Priority.LOW)
    started_at = None
    for i in range(1000):
        _push(q, f"high{i}", Priority.HIGH)
        picked = q.pop()
        assert picked is not None
        q.done(picked.tenant, picked.agent)
        if picked.item == "low":
            started_at = clock.now - 1000.0
            break
        clock.now += 0.1
    assert started_at is not None
    assert 20.0 <= started_at <= 20.2  # 2 x ageing: from low to high, then the older task wins


def test_a_single_task_of_another_tenant_is_next_despite_a_flood() -> None:
    q, _ = _queue()
    for i in range(10_000):
        _push(q, f"A{i}", Priority.NORMAL, tenant="A")
    first = q.pop()
    assert first is not None and first.item == "A0"
    _push(q, "B0", Priority.NORMAL, tenant="B")
    second = q.pop()
    assert second is not None and second.item == "B0"  # one slot turn at most


def test_tenants_take_turns_then_agents_within_a_tenant() -> None:
    q, _ = _queue()
    for i in range(3):
        _push(q, f"A{i}", Priority.NORMAL, tenant="A", agent="x")
        _push(q, f"B{i}", Priority.NORMAL, tenant="B", agent="y")
    assert _drain(q) == ["A0", "B0", "A1", "B1", "A2", "B2"]
    for i in range(2):
        _push(q, f"x{i}", Priority.NORMAL, tenant="A", agent="x")
        _push(q, f"z{i}", Priority.NORMAL, tenant="A", agent="z")
    assert _drain(q) == ["x0", "z0", "x1", "z1"]


def test_priority_beats_tenant_turns() -> None:
    q, _ = _queue()
    _push(q, "A-normal", Priority.NORMAL, tenant="A")
    _push(q, "B-high", Priority.HIGH, tenant="B")
    picked = q.pop()
    assert picked is not None and picked.item == "B-high"


def test_tenant_cap_holds_back_only_that_tenant() -> None:
    q, _ = _queue(tenants={"A": 2})
    for i in range(4):
        _push(q, f"A{i}", Priority.CRITICAL, tenant="A")
    _push(q, "B0", Priority.LOW, tenant="B")
    picks = [q.pop() for _ in range(3)]
    assert [p.item for p in picks if p] == ["A0", "A1", "B0"]
    assert q.pop() is None  # A is at its cap, nothing else is held
    assert q.running_by_tenant["A"] == 2
    q.done("A", "a")
    picked = q.pop()
    assert picked is not None and picked.item == "A2"


def test_agent_cap() -> None:
    q, _ = _queue(agents={"gpu": 1})
    _push(q, "g0", Priority.NORMAL, agent="gpu")
    _push(q, "g1", Priority.NORMAL, agent="gpu")
    _push(q, "c0", Priority.LOW, agent="cpu")
    picks = [q.pop() for _ in range(3)]
    assert [p.item if p else None for p in picks] == ["g0", "c0", None]
    q.done("t", "gpu")
    picked = q.pop()
    assert picked is not None and picked.item == "g1"


def test_remove_and_counters() -> None:
    q, _ = _queue()
    for i in range(4):
        _push(q, f"A{i}", Priority.NORMAL, tenant="A")
    _push(q, "B0", Priority.LOW, tenant="B")
    assert q.held_by_tenant == {"A": 4, "B": 1}
    assert q.held_by_rank == {Priority.NORMAL.rank: 4, Priority.LOW.rank: 1}
    assert q.remove(lambda item: item in {"A1", "B0"}) == ["A1", "B0"]
    assert len(q) == 3 and q.held_by_tenant == {"A": 3}
    assert _drain(q) == ["A0", "A2", "A3"]
    assert len(q) == 0 and not q.held_by_tenant and not q.running_by_tenant


def test_idle_tenants_are_forgotten() -> None:
    q, _ = _queue()
    _push(q, "A0", Priority.NORMAL, tenant="A")
    assert _drain(q) == ["A0"]
    assert q._tenant_served == {} and q.groups == 0


def test_pop_with_max_rank_takes_only_critical_or_aged_to_critical() -> None:
    q, clock = _queue(ageing=10.0)
    _push(q, "normal", Priority.NORMAL)
    assert q.pop(max_rank=Priority.CRITICAL.rank) is None  # a reserved slot does not take it
    _push(q, "crit", Priority.CRITICAL)
    picked = q.pop(max_rank=Priority.CRITICAL.rank)
    assert picked is not None and picked.item == "crit"
    clock.now += 20  # the normal task has aged two classes: it competes as critical now
    picked = q.pop(max_rank=Priority.CRITICAL.rank)
    assert picked is not None and picked.item == "normal" and picked.effective_rank == 0
