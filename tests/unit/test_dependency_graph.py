"""The rules of depends_on, pure: the verdict for a waiting task and the cycle walk."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from pydantic import ValidationError

from agent_fabric.admission.dependency_graph import CycleWalk, DepState, judge
from agent_fabric.tasks import TaskSpec, TaskStatus

DONE = DepState(TaskStatus.COMPLETED)


def walk(job: str, deps: list[str], graph: Mapping[str, list[str]], limit: int = 10_000) -> CycleWalk:
    """Drive the walk over an in-memory graph the way the store drives it over task_dependencies."""
    w = CycleWalk(job, deps, limit=limit)
    rounds = 0
    while not w.done:
        w.feed([(j, d) for j in w.frontier for d in graph.get(j, [])])
        rounds += 1
        assert rounds < 100_000
    return w


def test_every_dependency_completed_releases() -> None:
    assert judge(["a", "b"], {"a": DONE, "b": DONE}, due=False).kind == "release"
    assert judge(["a", "b"], {"a": DONE, "b": DONE}, due=True).kind == "release"


@pytest.mark.parametrize("status", ["failed", "cancelled", "timed_out", "rejected"])
def test_a_failed_dependency_fails_the_task_naming_it(status: str) -> None:
    states = {"a": DONE, "b": DepState(TaskStatus(status), "boom"), "c": DepState(TaskStatus.RUNNING)}
    verdict = judge(["a", "b", "c", "missing"], states, due=False)
    assert verdict.kind == "fail" and verdict.code == "dependency_failed"
    assert verdict.message == f"dependency 'b' ended {status} (boom)"


def test_unfinished_or_missing_dependencies_wait_until_the_deadline() -> None:
    states = {"a": DONE, "b": DepState(TaskStatus.QUEUED), "c": DepState(TaskStatus.WAITING)}
    verdict = judge(["a", "b", "c", "x"], states, due=False)
    assert (verdict.kind, verdict.pending, verdict.missing) == ("wait", ("b", "c"), ("x",))
    late = judge(["a", "b", "c", "x", "y"], states, due=True)
    assert late.kind == "fail" and late.code == "dependency_missing"
    assert late.message is not None and "'x', 'y'" in late.message
    # Past the deadline with nothing missing: waiting on existing tasks has no deadline.
    assert judge(["a", "b"], states, due=True).kind == "wait"


def test_no_cycle_in_a_dag_with_shared_ancestors() -> None:
    graph = {"c": ["a", "b"], "b": ["a"], "a": []}
    w = walk("d", ["c", "b"], graph)
    assert w.cycle is None and not w.overflow and w.refusal("t") is None
    assert w.visited == 3


def test_a_cycle_is_reported_as_its_path() -> None:
    graph = {"b": ["c"], "c": ["x", "a"], "x": []}
    w = walk("a", ["b"], graph)
    assert w.cycle == ["a", "b", "c", "a"]
    refusal = w.refusal("pod")
    assert refusal is not None and refusal.code == "dependency_cycle" and refusal.tenant_id == "pod"
    assert "a -> b -> c -> a" in refusal.message


def test_self_dependency_is_the_shortest_cycle() -> None:
    w = CycleWalk("a", ["b", "a"])
    assert w.done and w.cycle == ["a", "a"]


def test_cycles_that_do_not_pass_through_the_new_task_are_not_its_business() -> None:
    graph = {"b": ["c"], "c": ["b"]}  # b <-> c already (cannot be stored, but the walk must end)
    w = walk("a", ["b"], graph)
    assert w.cycle is None and w.visited == 2


def test_the_walk_is_bounded() -> None:
    chain = {f"n{i}": [f"n{i + 1}"] for i in range(200)}
    w = walk("new", ["n0"], chain, limit=50)
    assert w.overflow and w.cycle is None and w.visited == 51
    refusal = w.refusal("t")
    assert refusal is not None and refusal.code == "dependency_graph_too_large"
    assert walk("new", ["n0"], chain, limit=500).refusal("t") is None


def test_dependency_ids_follow_the_job_id_rules() -> None:
    base = {"job_id": "j", "agent_definition": {"runtime": "builtin"}, "task": {"type": "echo"}}
    assert TaskSpec.model_validate({**base, "depends_on": ["a-1", "b.2"]}).depends_on == ["a-1", "b.2"]
    with pytest.raises(ValidationError):
        TaskSpec.model_validate({**base, "depends_on": ["has space"]})
    with pytest.raises(ValidationError):
        TaskSpec.model_validate({**base, "depends_on": ["x" * 129]})
